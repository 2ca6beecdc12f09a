// Starts `dnetc lsp` for .dnet files; the client's settings under `dnetc` go to the server.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function settings() {
  const c = vscode.workspace.getConfiguration("dnetc");
  return { batch: c.get("batch"), dtype: c.get("dtype"), overrides: c.get("overrides") };
}

function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("dnetc").get("command");
  client = new LanguageClient(
    "dnetc",
    "dnetc",
    { command, args },
    {
      documentSelector: [{ scheme: "file", language: "dnet" }],
      initializationOptions: { dnetc: settings() },
      synchronize: { configurationSection: "dnetc" },
    }
  );
  context.subscriptions.push({ dispose: () => client && client.stop() });
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
