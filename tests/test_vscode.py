"""The VS Code extension (editors/vscode): its TextMate grammar in step with dsl/dnet.lark and the
language, and its scopes right on every zoo file against Lark's own tokens."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dnetc import dsl
from dnetc.dsl.evaluate import FUNCTIONS
from dnetc.dsl.syntax import GRAMMAR, parser
from dnetc.runtime.editor import _operations

from .conftest import ROOT

EXTENSION = ROOT / "editors" / "vscode"
TM = json.loads((EXTENSION / "syntaxes" / "dnet.tmLanguage.json").read_text())
WORDS = set(re.findall(r'"([a-z_]+)"', GRAMMAR.read_text())) - {"x"}  # `x` of sizes is an operator


def _words(pattern: str) -> set[str]:
    return set(re.search(r"\\b\((.*?)\)\\b", TM["repository"][pattern]["match"]).group(1).split("|"))


def test_every_keyword_of_the_grammar_is_highlighted():
    highlighted = _words("keyword") | _words("operator-word") | _words("constant")
    assert highlighted >= WORDS, f"keywords of dsl/dnet.lark the TextMate grammar misses: {WORDS - highlighted}"
    assert {"none", "true", "false"} <= _words("constant") and {"and", "or", "not"} == _words("operator-word")


def test_every_operation_and_function_of_the_language_is_highlighted():
    assert _operations() <= _words("operation")
    assert set(FUNCTIONS) <= _words("function")


# What each of Lark's tokens is highlighted as: the spec of the grammar's scopes, from Lark's own lexer.
SCOPES = {
    "INT": "constant.numeric.dnet",
    "FLOAT": "constant.numeric.dnet",
    "DIMS": "constant.numeric.dims.dnet",
    "STRING": "string.quoted.double.dnet",
    "NONE": "constant.language.dnet",
    "TRUE": "constant.language.dnet",
    "FALSE": "constant.language.dnet",
    "AND": "keyword.operator.logical.dnet",
    "OR": "keyword.operator.logical.dnet",
    "NOT": "keyword.operator.logical.dnet",
    **dict.fromkeys(
        ["EQUAL", "COMPARE", "PLUS", "MINUS", "STAR", "SLASH", "FLOORDIV", "PERCENT", "X"], "keyword.operator.dnet"
    ),
}
DEFINITION = ("keyword.other.definition.dnet", "entity.name.function.dnet")  # network NAME, layer NAME
COMMENT = "comment.line.number-sign.dnet"


def _assertions(text: str) -> dict[int, list[tuple[int, int, str]]]:
    """For each line, (column, length, scopes) of what its tokens must be, in vscode-tmgrammar-test's
    terms (`- scope`: must not be), read from Lark's tokens: keywords, numbers, strings, operators,
    definitions, parameters and keyword arguments, operations and functions called, and comments
    (what Lark's lexer drops)."""
    tokens = list(parser().lex(text))
    out: dict[int, list[tuple[int, int, str]]] = {}

    def expect(token, scope: str) -> None:
        out.setdefault(token.line - 1, []).append((token.column - 1, len(str(token)), scope))

    calls = _operations() | set(FUNCTIONS)
    for i, token in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        before = tokens[i - 1] if i else None
        word = str(token)
        if after is not None and after.type == "EQUAL" and before is not None and before.type in ("LPAR", "COMMA"):
            expect(token, "variable.parameter.dnet")  # a parameter, or a call's keyword argument: layer = ...
        elif token.type == "NAME" and before is not None and before.type == "LET":
            expect(token, "variable.other.dnet")
        elif token.type in ("NETWORK", "LAYER") and after is not None and after.type == "NAME":
            expect(token, DEFINITION[0])
        elif token.type == "NAME" and before is not None and before.type in ("NETWORK", "LAYER"):
            expect(token, DEFINITION[1])
        elif token.type in SCOPES:
            expect(token, SCOPES[token.type])
        elif token.type == "LAYER":  # normalization layer
            expect(token, "constant.language.dnet")
        elif word in WORDS and token.type == word.upper():
            expect(token, "keyword.control.dnet")
        elif token.type == "NAME" and word in calls and after is not None and after.type == "LPAR":
            expect(token, "support.function.builtin.dnet" if word in FUNCTIONS else "support.function.operation.dnet")
        elif token.type == "NAME" and before is not None and before.type in ("NORMALIZATION", "ACTIVATION"):
            expect(token, "- support.function.operation.dnet")  # a choice or a parameter, not the operation
        elif token.type == "NAME":  # a parameter or let name: no keyword inside it is highlighted
            expect(token, "- keyword.control.dnet")
    strings = [(t.line - 1, t.column - 1, t.column - 1 + len(str(t))) for t in tokens if t.type == "STRING"]
    for n, line in enumerate(text.split("\n")):
        for m in re.finditer("#", line):
            if not any(s == n and a <= m.start() < b for s, a, b in strings):
                out.setdefault(n, []).append((m.start(), len(line) - m.start(), COMMENT))
                break
    return out


def _case(name: str, text: str) -> str:
    """The file as a vscode-tmgrammar-test case: a header, then each line followed by its assertions."""
    lines = [f'# SYNTAX TEST "{TM["scopeName"]}" "{name}"']
    expected = _assertions(text)
    for n, line in enumerate(text.split("\n")):
        assert not re.match(r"\s*#\s*[\^<]", line), f"{name}:{n + 1} reads as an assertion line"
        lines.append(line)
        for column, length, scope in expected.get(n, []):
            where = " <" + "-" * length if column == 0 else " " * (column - 1) + "^" * length
            lines.append(f"#{where} {scope}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tmgrammar_test() -> Path:
    """vscode-tmgrammar-test, at the version package.json pins: the extension's own install, else one
    npm installs once into the user's cache."""
    tool = EXTENSION / "node_modules" / ".bin" / "vscode-tmgrammar-test"
    if tool.exists():
        return tool
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the grammar's tests need vscode-tmgrammar-test (Node.js)")
    version = json.loads((EXTENSION / "package.json").read_text())["devDependencies"]["vscode-tmgrammar-test"]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dnetc" / f"tmgrammar-test-{version}"
    tool = cache / "node_modules" / ".bin" / "vscode-tmgrammar-test"
    if not tool.exists():
        r = subprocess.run(
            [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", f"vscode-tmgrammar-test@{version}"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if r.returncode != 0:
            pytest.skip(f"npm could not install vscode-tmgrammar-test (offline?): {r.stderr.strip()[-300:]}")
    return tool


def test_the_grammar_scopes_every_zoo_file_as_lark_lexes_it(tmgrammar_test, tmp_path):
    """vscode-tmgrammar-test (vscode-textmate, VS Code's own engine) on every zoo file, with the scopes
    that Lark's tokens give, and on the extension's own test of the corners (tests/*.test.dnet)."""
    for name in dsl.zoo_names():
        text = (dsl.zoo_dir() / f"{name}.dnet").read_text()
        (tmp_path / f"{name}.test.dnet").write_text(_case(f"archs/{name}.dnet", text))
    for case in (EXTENSION / "tests").glob("*.test.dnet"):
        shutil.copy(case, tmp_path / case.name)
    r = subprocess.run(
        [
            str(tmgrammar_test),
            "--compact",
            "--config",
            str(EXTENSION / "package.json"),
            "--grammar",
            str(EXTENSION / "syntaxes" / "dnet.tmLanguage.json"),
            str(tmp_path / "*.test.dnet"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


def test_the_extension_names_its_grammar_and_configuration():
    manifest = json.loads((EXTENSION / "package.json").read_text())
    (language,) = manifest["contributes"]["languages"]
    assert language["extensions"] == [".dnet"]
    (grammar,) = manifest["contributes"]["grammars"]
    assert (EXTENSION / grammar["path"]).is_file() and grammar["scopeName"] == TM["scopeName"]
    config = json.loads((EXTENSION / language["configuration"]).read_text())
    assert config["comments"]["lineComment"] == "#"  # as the grammar's COMMENT
    assert re.search(r"COMMENT: /#", GRAMMAR.read_text())
    assert manifest["contributes"]["configuration"]["properties"]["dnetc.command"]["default"] == ["dnetc", "lsp"]
