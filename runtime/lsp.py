"""`dnetc lsp`: the language server for .dnet files, over stdio (pygls). It never imports torch.

Each edit re-reads the document once (runtime/editor.py: parse, load, lower to the graph), and every
request reads that: diagnostics with their ranges, notes as related information and "did you mean" as
a quick fix; hovers; inlay hints; completion; go to definition; document symbols; formatting through
`dnetc fmt`. The client's settings (`dnetc.batch`, `dnetc.dtype`, `dnetc.overrides`) feed the hovers.
"""

from __future__ import annotations

import gc
from typing import Any
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from dnetc.dsl.errors import Span

from . import version
from .editor import Document, Settings
from .editor import _range as editor_range

server = LanguageServer("dnetc", version())
documents: dict[str, Document] = {}
settings = Settings()

KINDS = {
    "keyword": types.CompletionItemKind.Keyword,
    "operation": types.CompletionItemKind.Function,
    "function": types.CompletionItemKind.Function,
    "argument": types.CompletionItemKind.Property,
    "name": types.CompletionItemKind.Variable,
    "choice": types.CompletionItemKind.EnumMember,
    "file": types.CompletionItemKind.File,
}
SYMBOLS = {"network": types.SymbolKind.Class, "layer": types.SymbolKind.Function, "let": types.SymbolKind.Variable}


def _path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def _range(r: tuple[tuple[int, int], tuple[int, int]]) -> types.Range:
    (l0, c0), (l1, c1) = r
    return types.Range(types.Position(l0, c0), types.Position(l1, c1))


def _span_range(span: Span) -> types.Range:
    return _range(editor_range(span))


def document(uri: str) -> Document:
    """The analysis of a document's current text, made once per version."""
    text = server.workspace.get_text_document(uri).source
    known = documents.get(uri)
    if known is None or known.text != text or known.settings is not settings:
        known = documents[uri] = Document(text, _path(uri), settings)
    return known


def publish(uri: str) -> None:
    doc = document(uri)
    diagnostics = [
        types.Diagnostic(
            range=_range(d.range),
            message=d.message,
            severity=types.DiagnosticSeverity.Error,
            source="dnetc",
            related_information=[
                types.DiagnosticRelatedInformation(types.Location(uri, _range(d.range)), note) for note in d.notes
            ]
            or None,
            data={"fix": d.fix} if d.fix else None,
        )
        for d in doc.diagnostics()
    ]
    server.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics))


def _configure(values: Any) -> None:
    """Settings from the client (initializationOptions or workspace/didChangeConfiguration)."""
    global settings
    if not isinstance(values, dict):
        return
    values = values.get("dnetc", values)
    settings = Settings(
        batch=int(values.get("batch", settings.batch)),
        dtype=str(values.get("dtype", settings.dtype)),
        overrides=[str(o) for o in values.get("overrides", settings.overrides)],
    )


@server.feature(types.INITIALIZE)
def initialize(params: types.InitializeParams) -> None:
    _configure(params.initialization_options)


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def did_change_configuration(params: types.DidChangeConfigurationParams) -> None:
    _configure(params.settings)
    for uri in list(documents):
        publish(uri)


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(params: types.DidOpenTextDocumentParams) -> None:
    publish(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(params: types.DidChangeTextDocumentParams) -> None:
    publish(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(params: types.DidCloseTextDocumentParams) -> None:
    documents.pop(params.text_document.uri, None)


@server.feature(types.TEXT_DOCUMENT_HOVER)
def hover(params: types.HoverParams) -> types.Hover | None:
    text = document(params.text_document.uri).hover(params.position.line, params.position.character)
    if text is None:
        return None
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=text))


@server.feature(types.TEXT_DOCUMENT_INLAY_HINT)
def inlay_hints(params: types.InlayHintParams) -> list[types.InlayHint]:
    return [
        types.InlayHint(position=types.Position(line, char), label=label, kind=types.InlayHintKind.Type)
        for (line, char), label in document(params.text_document.uri).inlay_hints()
        if params.range.start.line <= line <= params.range.end.line
    ]


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=["(", '"', " "]))
def completion(params: types.CompletionParams) -> types.CompletionList:
    items = [
        types.CompletionItem(label=label, kind=KINDS[kind], detail=kind)
        for label, kind in document(params.text_document.uri).completions(
            params.position.line, params.position.character
        )
    ]
    return types.CompletionList(is_incomplete=False, items=items)


@server.feature(types.TEXT_DOCUMENT_DEFINITION)
def definition(params: types.DefinitionParams) -> types.Location | None:
    found = document(params.text_document.uri).definition(params.position.line, params.position.character)
    if found is None:
        return None
    path, span = found
    uri = params.text_document.uri if path == _path(params.text_document.uri) else f"file://{path}"
    return types.Location(uri, _span_range(span))


@server.feature(types.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def symbols(params: types.DocumentSymbolParams) -> list[types.DocumentSymbol]:
    return [
        types.DocumentSymbol(
            name=name, kind=SYMBOLS[kind], range=_span_range(span), selection_range=_span_range(span), detail=kind
        )
        for name, kind, span in document(params.text_document.uri).symbols()
    ]


@server.feature(types.TEXT_DOCUMENT_FORMATTING)
def formatting(params: types.DocumentFormattingParams) -> list[types.TextEdit]:
    doc = document(params.text_document.uri)
    formatted = doc.formatted()
    if formatted is None or formatted == doc.text:
        return []
    lines = doc.text.splitlines()
    whole = types.Range(types.Position(0, 0), types.Position(len(lines) + 1, 0))
    return [types.TextEdit(range=whole, new_text=formatted)]


@server.feature(types.TEXT_DOCUMENT_CODE_ACTION)
def code_actions(params: types.CodeActionParams) -> list[types.CodeAction]:
    """The "did you mean" of each diagnostic, as a quick fix that writes it in place."""
    out = []
    for d in params.context.diagnostics:
        fix = (d.data or {}).get("fix") if isinstance(d.data, dict) else None
        if not fix:
            continue
        edit = types.WorkspaceEdit(changes={params.text_document.uri: [types.TextEdit(range=d.range, new_text=fix)]})
        out.append(
            types.CodeAction(
                title=f"replace with `{fix}`", kind=types.CodeActionKind.QuickFix, diagnostics=[d], edit=edit
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """`dnetc lsp`: serve on stdin and stdout until the client exits."""
    if argv and argv[0] not in ("--stdio",):
        print("usage: dnetc lsp [--stdio]  (the language server, over stdin and stdout)")
        return 0 if argv[0] in ("-h", "--help") else 2
    gc.freeze()  # the modules and the grammar, never garbage: each collection scans only what edits made
    server.start_io()
    return 0
