"""`dnetc lsp` end to end: pytest-lsp's client talks to the server over stdio, as an editor would."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest_lsp = pytest.importorskip("pytest_lsp")
from lsprotocol import types  # noqa: E402
from pytest_lsp import ClientServerConfig, LanguageClient  # noqa: E402

from dnetc import dsl  # noqa: E402

ZOO = dsl.zoo_dir()
FAMILY = ZOO / "densenet_bc.dnet"


@pytest_lsp.fixture(
    scope="module",
    config=ClientServerConfig(server_command=[sys.executable, "-m", "dnetc.runtime", "lsp"]),
)
async def client(lsp_client: LanguageClient):
    params = types.InitializeParams(
        capabilities=types.ClientCapabilities(),
        root_uri=ZOO.as_uri(),
        initialization_options={"dnetc": {"batch": 32}},
    )
    await lsp_client.initialize_session(params)
    yield
    await lsp_client.shutdown_session()


def _open(client: LanguageClient, path: Path, text: str, version: int = 1) -> str:
    uri = path.as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=uri, language_id="dnet", version=version, text=text))
    )
    return uri


async def _diagnostics(client: LanguageClient, uri: str) -> list[types.Diagnostic]:
    await client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    return client.diagnostics[uri]


async def _clean(client: LanguageClient, path: Path) -> tuple[str, str]:
    """Open a file that has no mistakes; its uri and text."""
    text = path.read_text()
    uri = _open(client, path, text)
    assert not await _diagnostics(client, uri)
    return uri, text


def _at(text: str, needle: str, offset: int) -> types.Position:
    line, col = _line_of(text, needle)
    return types.Position(line, col + offset)


def _line_of(text: str, needle: str) -> tuple[int, int]:
    for i, line in enumerate(text.splitlines()):
        if needle in line:
            return i, line.index(needle)
    raise AssertionError(needle)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_misspelled_operation_is_diagnosed_at_its_range_and_fixed_by_the_quick_fix(client, tmp_path):
    text = FAMILY.read_text().replace("dense(layers", "dnese(layers")
    uri = _open(client, tmp_path / "typo.dnet", text)
    (d,) = await _diagnostics(client, uri)
    line, col = _line_of(text, "dnese(")
    assert (d.range.start.line, d.range.start.character) == (line, col)
    assert (d.range.end.line, d.range.end.character) == (line, col + len("dnese"))
    assert "dnese" in d.message and d.severity == types.DiagnosticSeverity.Error
    actions = await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri),
            range=d.range,
            context=types.CodeActionContext(diagnostics=[d]),
        )
    )
    (action,) = actions
    (edit,) = action.edit.changes[uri]
    assert edit.new_text == "dense" and edit.range == d.range


@pytest.mark.asyncio(loop_scope="module")
async def test_hover_on_a_dense_block_gives_its_shapes_parameters_and_memory(client):
    uri, text = await _clean(client, FAMILY)
    hover = await client.text_document_hover_async(
        types.HoverParams(types.TextDocumentIdentifier(uri), _at(text, "dense(layers", 2))
    )
    value = hover.contents.value
    assert "**denseblock1** (dense): 24x32x32 -> 216x32x32, 175,680 parameters" in value
    assert "denseblock3" in value and "saved for backward at batch 32" in value  # the client's setting
    hover = await client.text_document_hover_async(
        types.HoverParams(types.TextDocumentIdentifier(uri), _at(text, "let layers", 5))
    )
    assert hover.contents.value == "`layers` = `(depth - 4) / 6 = (100 - 4) / 6 = 16`"


@pytest.mark.asyncio(loop_scope="module")
async def test_inlay_hints_give_the_shape_after_each_statement(client):
    text = FAMILY.read_text()
    uri = _open(client, FAMILY, text)
    await _diagnostics(client, uri)
    hints = await client.text_document_inlay_hint_async(
        types.InlayHintParams(
            types.TextDocumentIdentifier(uri), types.Range(types.Position(0, 0), types.Position(100, 0))
        )
    )
    labels = [h.label for h in hints]
    assert "  -> 216x32x32, 300x16x16, 342x8x8" in labels and "  -> 10" in labels


@pytest.mark.asyncio(loop_scope="module")
async def test_completion_inside_dense_offers_its_arguments_and_the_names_in_scope(client, tmp_path):
    text = FAMILY.read_text()
    uri = _open(client, tmp_path / "complete.dnet", text)
    await _diagnostics(client, uri)
    line, col = _line_of(text, "dense(layers")
    result = await client.text_document_completion_async(
        types.CompletionParams(types.TextDocumentIdentifier(uri), types.Position(line, col + len("dense(")))
    )
    labels = {item.label for item in result.items}
    assert {"growth = ", "bottleneck = ", "connect = ", "layer = "} <= labels
    assert {"layers", "growth", "depth", "transition", "harmonic", "shared"} <= labels


@pytest.mark.asyncio(loop_scope="module")
async def test_formatting_lays_the_file_out_as_dnetc_fmt(client, tmp_path):
    messy = FAMILY.read_text().replace("    stem conv(3x3, 2 * growth)", "  stem   conv( 3x3,2*growth )")
    uri = _open(client, tmp_path / "messy.dnet", messy)
    await _diagnostics(client, uri)
    (edit,) = await client.text_document_formatting_async(
        types.DocumentFormattingParams(types.TextDocumentIdentifier(uri), types.FormattingOptions(4, True))
    )
    assert edit.new_text == dsl.format_source(messy) and "    stem conv(3x3, 2 * growth)" in edit.new_text


@pytest.mark.asyncio(loop_scope="module")
async def test_go_to_a_familys_definition_across_files_and_the_symbols(client):
    uri, text = await _clean(client, ZOO / "densenet_bc_190_40.dnet")
    location = await client.text_document_definition_async(
        types.DefinitionParams(types.TextDocumentIdentifier(uri), _at(text, "= densenet_bc(", 4))
    )
    assert location.uri == FAMILY.resolve().as_uri()
    symbols = await client.text_document_document_symbol_async(
        types.DocumentSymbolParams(types.TextDocumentIdentifier(FAMILY.as_uri()))
    )
    assert ("densenet_bc", types.SymbolKind.Class) in {(s.name, s.kind) for s in symbols}
