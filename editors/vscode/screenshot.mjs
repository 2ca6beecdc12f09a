// The editor screenshots of docs/editor.md, drawn from the real parts: the extension's TextMate
// grammar tokenised by vscode-textmate (VS Code's engine), and `dnetc lsp`'s own replies
// (diagnostics, hover, inlay hints, quick fix) over stdio through vscode-jsonrpc (VS Code's
// JSON-RPC), shown in Monaco (VS Code's editor) in headless Chromium with VS Code's Dark+ colours.
//
//     npm install && npm run screenshot        # writes ../../docs/images/editor-*.png
//
// CHROME names a Chrome or Chromium to use; without it the one of @sparticuz/chromium runs.
import { spawn } from "node:child_process";
import { readFileSync, mkdirSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as rpc from "vscode-jsonrpc/node";
import vsctm from "vscode-textmate";
import oniguruma from "vscode-oniguruma";
import puppeteer from "puppeteer-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const out = path.join(root, "docs", "images");
const dnetc = (process.env.DNETC ?? "dnetc lsp").split(" ");

// Dark+ (VS Code's default dark theme): the colours of the scopes the grammar gives
const THEME = {
  comment: "6A9955", string: "CE9178", "constant.character.escape": "D7BA7D", "constant.numeric": "B5CEA8",
  "constant.language": "569CD6", "keyword.control": "C586C0", "keyword.operator": "D4D4D4",
  "keyword.other.definition": "569CD6", "entity.name.function": "DCDCAA", "support.function": "DCDCAA",
  variable: "9CDCFE",
};

async function grammar() {
  const wasm = readFileSync(path.join(path.dirname(fileURLToPath(import.meta.resolve("vscode-oniguruma"))), "onig.wasm"));
  await oniguruma.loadWASM(wasm.buffer);
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({ createOnigScanner: (p) => new oniguruma.OnigScanner(p), createOnigString: (s) => new oniguruma.OnigString(s) }),
    loadGrammar: async () => vsctm.parseRawGrammar(readFileSync(path.join(here, "syntaxes", "dnet.tmLanguage.json"), "utf8"), "dnet.tmLanguage.json"),
  });
  return registry.loadGrammar("source.dnet");
}

function tokenise(g, text) {
  let stack = vsctm.INITIAL;
  return text.split("\n").map((line) => {
    const r = g.tokenizeLine(line, stack);
    stack = r.ruleStack;
    return r.tokens.map((t) => ({ startIndex: t.startIndex, scopes: t.scopes[t.scopes.length - 1] }));
  });
}

// `dnetc lsp` over stdio: the diagnostics of a text, and whatever each request answers
async function server() {
  const child = spawn(dnetc[0], dnetc.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
  const connection = rpc.createMessageConnection(new rpc.StreamMessageReader(child.stdout), new rpc.StreamMessageWriter(child.stdin));
  const published = new Map();
  connection.onNotification("textDocument/publishDiagnostics", (p) => published.get(p.uri)?.(p.diagnostics));
  connection.onRequest("workspace/configuration", (p) => p.items.map(() => ({ batch: 64 })));
  connection.listen();
  await connection.sendRequest("initialize", { processId: process.pid, rootUri: pathToFileURL(root).href, capabilities: {} });
  connection.sendNotification("initialized", {});
  const open = (uri, text) =>
    new Promise((resolve) => {
      published.set(uri, resolve);
      connection.sendNotification("textDocument/didOpen", { textDocument: { uri, languageId: "dnet", version: 1, text } });
    });
  const stop = async () => {
    await connection.sendRequest("shutdown");
    await connection.sendNotification("exit").catch(() => {}); // the server may close its pipe first
    connection.dispose();
  };
  return { connection, open, stop };
}

function position(text, needle, offset = 0) {
  const at = text.indexOf(needle);
  if (at < 0) throw new Error(`no ${needle} in the text`);
  const before = text.slice(0, at + offset).split("\n");
  return { line: before.length - 1, character: before[before.length - 1].length };
}

async function shots() {
  const g = await grammar();
  const lsp = await server();
  const file = path.join(root, "archs", "densenet_bc.dnet");
  const text = readFileSync(file, "utf8");
  const uri = pathToFileURL(file).href;
  const wrong = text.replace("bottleneck = 4", "botleneck = 4");
  const wrongUri = pathToFileURL(path.join(root, "archs", "densenet_bc_typo.dnet")).href;
  const lines = text.split("\n").length;
  const [diagnostics0, diagnostics] = [await lsp.open(uri, text), await lsp.open(wrongUri, wrong)];
  const dense = position(text, "dense(", 2);
  const hover = await lsp.connection.sendRequest("textDocument/hover", { textDocument: { uri }, position: dense });
  const hints = await lsp.connection.sendRequest("textDocument/inlayHint", {
    textDocument: { uri }, range: { start: { line: 0, character: 0 }, end: { line: lines, character: 0 } },
  });
  const actions = await lsp.connection.sendRequest("textDocument/codeAction", {
    textDocument: { uri: wrongUri }, range: diagnostics[0].range, context: { diagnostics },
  });
  await lsp.stop();
  if (diagnostics0.length) throw new Error(`densenet_bc.dnet has diagnostics: ${JSON.stringify(diagnostics0)}`);
  return [
    { name: "editor-hover", text, tokens: tokenise(g, text), hover, hints, at: dense, diagnostics: [], actions: [] },
    { name: "editor-diagnostic", text: wrong, tokens: tokenise(g, wrong), hover: null, hints: [], at: diagnostics[0].range.start, diagnostics, actions },
  ];
}

const PAGE = `<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="/monaco/min/vs/editor/editor.main.css">
<style>html,body{margin:0;background:#1e1e1e}#editor{width:1180px;height:580px}</style></head>
<body><div id="editor"></div><script src="/monaco/min/vs/loader.js"></script>
<script>require.config({ paths: { vs: "/monaco/min/vs" } });
require(["vs/editor/editor.main"], () => { window.monacoReady = true; });</script></body></html>`;

function serve() {
  const entry = fileURLToPath(import.meta.resolve("monaco-editor")); // the package's folder, above its entry
  const monaco = entry.slice(0, entry.lastIndexOf(`${path.sep}monaco-editor${path.sep}`) + "/monaco-editor".length);
  const types = { ".js": "text/javascript", ".css": "text/css", ".ttf": "font/ttf", ".html": "text/html" };
  const s = http.createServer((req, res) => {
    const url = decodeURIComponent(req.url.split("?")[0]);
    if (url === "/") return res.writeHead(200, { "content-type": "text/html" }).end(PAGE);
    const file = path.join(monaco, url.replace(/^\/monaco\//, ""));
    let body;
    try {
      body = readFileSync(file);
    } catch {
      return res.writeHead(404).end();
    }
    res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream" }).end(body);
  });
  return new Promise((resolve) => s.listen(0, "127.0.0.1", () => resolve(s)));
}

async function browser() {
  let executablePath = process.env.CHROME;
  let args = [];
  if (!executablePath) {
    const chromium = (await import("@sparticuz/chromium")).default;
    executablePath = await chromium.executablePath();
    args = chromium.args;
  }
  return puppeteer.launch({ executablePath, args, headless: true, defaultViewport: { width: 1180, height: 580, deviceScaleFactor: 1 } });
}

// in the page: Monaco with the grammar's tokens, the server's hints, hover, diagnostics and quick fix
function draw({ shot, theme }) {
  const monaco = window.monaco;
  monaco.languages.register({ id: "dnet" });
  const byLine = new Map(shot.text.split("\n").map((line, n) => [line, shot.tokens[n]]));
  monaco.languages.setTokensProvider("dnet", {
    getInitialState: () => ({ clone() { return this; }, equals: () => true }),
    tokenize: (line, state) => ({ tokens: byLine.get(line) ?? [], endState: state }),
  });
  const rules = Object.entries(theme).map(([token, foreground]) => ({ token, foreground }));
  monaco.editor.defineTheme("dark-plus", { base: "vs-dark", inherit: true, rules, colors: {} });
  const range = (r) => new monaco.Range(r.start.line + 1, r.start.character + 1, r.end.line + 1, r.end.character + 1);
  monaco.languages.registerInlayHintsProvider("dnet", {
    provideInlayHints: () => ({
      hints: shot.hints.map((h) => ({
        label: typeof h.label === "string" ? h.label : h.label.map((p) => p.value).join(""),
        position: { lineNumber: h.position.line + 1, column: h.position.character + 1 },
        kind: h.kind ?? 1, paddingLeft: h.paddingLeft, paddingRight: h.paddingRight,
      })),
      dispose() {},
    }),
  });
  if (shot.hover) {
    monaco.languages.registerHoverProvider("dnet", {
      provideHover: () => ({ contents: [{ value: shot.hover.contents.value }], range: shot.hover.range && range(shot.hover.range) }),
    });
  }
  monaco.languages.registerCodeActionProvider("dnet", {
    provideCodeActions: (model) => ({
      actions: shot.actions.map((a) => ({
        title: a.title, kind: a.kind, isPreferred: a.isPreferred,
        edit: { edits: Object.values(a.edit.changes).flat().map((e) => ({ resource: model.uri, textEdit: { range: range(e.range), text: e.newText }, versionId: undefined })) },
      })),
      dispose() {},
    }),
  });
  const model = monaco.editor.createModel(shot.text, "dnet", monaco.Uri.parse("file:///archs/densenet_bc.dnet"));
  monaco.editor.setModelMarkers(model, "dnetc", shot.diagnostics.map((d) => ({
    ...range(d.range),
    message: d.message, severity: d.severity === 1 ? 8 : 4, source: d.source, code: d.code,
    relatedInformation: (d.relatedInformation ?? []).map((r) => ({ resource: model.uri, message: r.message, ...range(r.location.range) })),
  })));
  const editor = monaco.editor.create(document.getElementById("editor"), {
    model, theme: "dark-plus", fontSize: 14, lineHeight: 20, minimap: { enabled: false }, inlayHints: { enabled: "on" },
    scrollBeyondLastLine: false, renderLineHighlight: "none", hover: { enabled: true, delay: 0, sticky: true, above: false }, automaticLayout: false,
    occurrencesHighlight: "off", selectionHighlight: false,
    fontFamily: "DejaVu Sans Mono, Menlo, Consolas, monospace",
  });
  editor.setPosition({ lineNumber: shot.at.line + 1, column: shot.at.character + 1 });
  editor.focus();
  window.editor = editor;
}

const server_ = await serve();
const chrome = await browser();
mkdirSync(out, { recursive: true });
for (const shot of await shots()) {
  const page = await chrome.newPage();
  page.on("pageerror", (e) => console.error("page:", e.message));
  await page.goto(`http://127.0.0.1:${server_.address().port}/`);
  await page.waitForFunction("window.monacoReady === true", { timeout: 60000 });
  await page.evaluate(draw, { shot, theme: THEME });
  await new Promise((r) => setTimeout(r, 800)); // tokens and inlay hints are drawn after a pause
  await page.evaluate(() => window.editor.trigger("screenshot", "editor.action.showHover", {}));
  await new Promise((r) => setTimeout(r, 1200));
  const file = path.join(out, `${shot.name}.png`);
  await page.screenshot({ path: file });
  console.log(`wrote ${path.relative(root, file)}`);
  await page.close();
}
await chrome.close();
server_.close();
