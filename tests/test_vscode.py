"""The VS Code extension (editors/vscode): its TextMate grammar in step with dsl/dnet.lark and the
language, and its scopes right on every zoo file against Lark's own tokens."""

from __future__ import annotations

import json
import re

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


def _scopes(text: str) -> list[str | None]:
    """The scope name at each character, as a TextMate engine gives it for these single-line rules."""
    rules = [TM["repository"][p["include"][1:]] for p in TM["patterns"]]
    flat = []
    for rule in rules:  # a group of patterns (numbers) is tried in order; a begin/end rule is one rule
        flat += rule["patterns"] if "patterns" in rule and "begin" not in rule else [rule]
    scopes: list[str | None] = [None] * len(text)
    for line_start, line in _lines(text):
        i = 0
        while i < len(line):
            for rule in flat:
                if "begin" in rule:
                    m = re.compile(rule["begin"]).match(line, i)
                    if m:
                        end = re.compile(rule["end"]).search(line, m.end())
                        stop = end.end() if end else len(line)
                        scopes[line_start + i : line_start + stop] = [rule["name"]] * (stop - i)
                        i = stop
                        break
                    continue
                m = re.compile(rule["match"], re.M).match(line, i)
                if m and m.end() > i:
                    if "captures" in rule:
                        for group, capture in rule["captures"].items():
                            a, b = m.span(int(group))
                            scopes[line_start + a : line_start + b] = [capture["name"]] * (b - a)
                    else:
                        scopes[line_start + i : line_start + m.end()] = [rule["name"]] * (m.end() - i)
                    i = m.end()
                    break
            else:
                i += 1
    return scopes


def _lines(text: str):
    start = 0
    for line in text.split("\n"):
        yield start, line
        start += len(line) + 1


@pytest.mark.parametrize("name", dsl.zoo_names())
def test_the_grammar_scopes_every_zoo_file_as_lark_lexes_it(name):
    """Each keyword Lark lexes is a keyword (or constant) scope, each number numeric, each string a
    string; each comment, which Lark's lexer drops, is a comment scope."""
    text = (dsl.zoo_dir() / f"{name}.dnet").read_text()
    scopes = _scopes(text)
    offsets = [0]
    for line in text.split("\n"):
        offsets.append(offsets[-1] + len(line) + 1)
    for token in parser().lex(text):
        at = offsets[token.line - 1] + token.column - 1
        scope = scopes[at] or ""
        if str(token) in WORDS:
            assert scope.startswith(("keyword.", "constant.language")), (token, scope)
        elif token.type in ("INT", "FLOAT", "DIMS"):
            assert scope.startswith("constant.numeric"), (token, scope)
        elif token.type == "STRING":
            assert scope.startswith("string."), (token, scope)
    for match in re.finditer(r"#[^\n]*", text):
        if scopes[match.start()] is not None and not scopes[match.start()].startswith("string"):
            assert scopes[match.start()].startswith("comment."), match.group()


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
