"""Every kind of mistake: a DnetError at the right line and column, with words a person uses."""

from __future__ import annotations

import pytest

from dnetc import compiler, dsl

NET = "network a(depth = 100, growth = 12) {\n    input 3 x 32 x 32\n"

# (case, source, line, col, in the message, in the help or notes or None)
CASES = [
    ("missing paren", "network a(depth = 100 {\n}", 1, 23, "unexpected `{`", None),
    ("misspelled keyword", "netwrk a { input 3 x 32 x 32 }", 1, 1, "unexpected `netwrk`", "did you mean `network`?"),
    (
        "misspelled statement keyword",
        NET + "    repat 3 { dense(4, 12) }\n}",
        3,
        11,
        "unexpected `3`",
        "did you mean `repeat`?",
    ),
    ("misspelled let", NET + "    lett n = 3\n}", 3, 12, "unexpected `=`", "did you mean `let`?"),
    ("end of file", NET, 2, 22, "unexpected end of file", "the `{` at line 1, column 37 is never closed"),
    ("bad character", NET + "    dense(4, 12) @\n}", 3, 18, "unexpected character `@`", None),
    ("single quotes", "use a from 'x.dnet'", 1, 12, "unexpected character `'`", "double quotes"),
    ("unknown name", NET + "    dense(4, growht)\n}", 3, 14, "unknown name `growht`", "did you mean `growth`?"),
    ("unknown operation", NET + "    dnese(4, 12)\n}", 3, 5, "unknown operation `dnese`", "did you mean `dense`?"),
    ("operation out of place", NET + "    conv(3x3, 12)\n}", 3, 5, "`conv` is not allowed in the network body", "stem"),
    (
        "unknown argument",
        NET + "    dense(4, 12, botleneck = 4)\n}",
        3,
        18,
        "`dense` has no argument `botleneck`",
        "did you mean `bottleneck`?",
    ),
    ("too many arguments", NET + "    dense(4, 12, 4, 0.1, 7)\n}", 3, 26, "`dense` takes at most 4 arguments", None),
    (
        "argument twice",
        NET + "    dense(4, 12, growth = 12)\n}",
        3,
        18,
        "argument `growth` of `dense` is given twice",
        None,
    ),
    (
        "positional after keyword",
        NET + "    dense(4, growth = 12, 3)\n}",
        3,
        27,
        "a positional argument cannot follow",
        "name = 3",
    ),
    ("missing field", NET + "    dense(4)\n}", 3, 5, "`dense` needs `growth`", "dense(layers, growth)"),
    (
        "zero growth",
        NET + "    dense(4, 0)\n}",
        3,
        14,
        "invalid `growth` for `dense`: `0`; it should be greater than 0",
        "growth rate",
    ),
    ("negative layers", NET + "    dense(-4, 12)\n}", 3, 11, "invalid `layers` for `dense`", "number of layers"),
    ("zero channels", NET + "    stem conv(3x3, 0)\n}", 3, 20, "invalid `channels` for `conv`", "output channels"),
    (
        "compression above 1",
        NET + "    dense(4, 12) transition(compression = 1.5)\n}",
        3,
        43,
        "invalid `compression` for `transition`: `1.5`; it should be less than or equal to 1",
        "0 < θ <= 1",
    ),
    (
        "compression zero",
        NET + "    dense(4, 12) transition(0)\n}",
        3,
        29,
        "it should be greater than 0",
        "compression",
    ),
    (
        "dropout of 1",
        NET + "    dense(4, 12, dropout = 1)\n}",
        3,
        28,
        "invalid `dropout` for `dense`: `1`",
        "0 <= p < 1",
    ),
    (
        "depth that does not fit BC",
        NET + "    let layers = (depth + 1 - 4) / 6\n    dense(layers, growth)\n}",
        4,
        11,
        "`layers` of `dense` must be an integer, but `layers` is 16.1667",
        "depth = 99 or depth = 105",
    ),
    (
        "non-integer expression",
        NET + "    dense(growth / 5, growth)\n}",
        3,
        11,
        "`layers` of `dense` must be an integer, but `growth / 5` is 2.4",
        "growth = 10 or growth = 15",
    ),
    ("wrong type", NET + "    dense([4], 12)\n}", 3, 11, "invalid `layers` for `dense`: `[4]`", None),
    ("list where a number goes", NET + "    dense(4 + [1], 12)\n}", 3, 15, "needs a number", None),
    (
        "division by zero",
        "network a(d = 0) {\n    input 3 x 32 x 32\n    dense(4 / d, 12)\n}",
        3,
        13,
        "division by zero",
        None,
    ),
    (
        "spatial size below 1",
        "network a {\n    input 3 x 4 x 4\n    repeat 4 separated by transition(0.5) {\n        dense(2, 12)\n    }\n}",
        3,
        27,
        "the feature maps shrink below 1 at `transition3`: 1x1 -> 0x0",
        "larger input",
    ),
    ("kernel of wrong rank", NET + "    stem conv(3x3x3, 16)\n}", 3, 10, "has 3 sizes, but the input has 2", "3x3"),
    (
        "pool padding",
        NET + "    stem maxpool(2, padding = 2)\n}",
        3,
        10,
        "padding 2 is more than half its window 2",
        None,
    ),
    ("no input", "network a {\n    dense(4, 12)\n}", 1, 9, "network `a` has no `input`", "input 3 x 32 x 32"),
    ("two inputs", NET + "    input 3 x 32 x 32\n}", 3, 5, "a network has one `input`", None),
    (
        "four spatial dimensions",
        "network a {\n    input 3 x 8 x 8 x 8 x 8\n}",
        2,
        5,
        "1, 2 or 3 spatial dimensions",
        None,
    ),
    ("zero input size", "network a {\n    input 3 x 0 x 32\n}", 2, 15, "an input size must be at least 1", None),
    (
        "head not last",
        NET + "    head classifier(10)\n    dense(4, 12)\n}",
        4,
        5,
        "nothing may follow the `head`",
        None,
    ),
    ("stem after blocks", NET + "    dense(4, 12)\n    stem conv(3, 16)\n}", 4, 5, "the `stem` must come before", None),
    ("let shadows parameter", NET + "    let depth = 3\n}", 3, 9, "`depth` is already a parameter", None),
    ("let twice", NET + "    let n = 3\n    let n = 4\n}", 4, 9, "`n` is defined twice", "first defined at line 3"),
    (
        "unknown function",
        NET + "    dense(flor(4.5), 12)\n}",
        3,
        11,
        "unknown function `flor`",
        "did you mean `floor`?",
    ),
    ("index out of range", NET + "    dense([1, 2][5], 12)\n}", 3, 18, "index 5 is out of range", None),
    ("for over a number", NET + "    for n in 3 { dense(n, 12) }\n}", 3, 14, "`for` needs a list", None),
    ("repeat a fraction", NET + "    repeat 1.5 { dense(2, 12) }\n}", 3, 12, "`repeat` needs an integer", None),
    ("absurd depth", NET + "    dense(1000000, 12)\n}", 3, 11, "less than or equal to 1000", None),
    ("absurd repeat", NET + "    repeat 100000 { dense(2, 12) }\n}", 3, 12, "the count must be 0 to 1000", None),
    ("too many layers", NET + "    repeat 3 { dense(1000, 12) }\n}", 3, 16, "over 2000 dense layers", None),
    ("huge number", NET + "    dense(99999999999 * 99999999999 * 99999999999, 12)\n}", 3, 11, "too large", None),
    ("infinite number", NET + "    dense(1e308 * 1e308, 12)\n}", 3, 11, "not a finite number", None),
    (
        "missing parameter value",
        "network a(depth) {\n    input 3 x 32 x 32\n}",
        1,
        11,
        "needs a value for its parameter `depth`",
        "--set depth=VALUE",
    ),
    (
        "parameter twice",
        "network a(d = 1, d = 2) {\n    input 3 x 32 x 32\n}",
        1,
        18,
        "parameter `d` is declared twice",
        None,
    ),
    ("missing import", 'use foo from "nope.dnet"\nnetwork a = foo(depth = 3)', 1, 14, "cannot find `nope.dnet`", None),
    (
        "misspelled import",
        'use densenet_bc from "densenet_bcc.dnet"\nnetwork a = densenet_bc()',
        1,
        22,
        "cannot find `densenet_bcc.dnet`",
        "did you mean `densenet_bc.dnet`",
    ),
    (
        "unknown imported name",
        'use densenet_bcc from "densenet_bc.dnet"\nnetwork a = densenet_bcc()',
        1,
        5,
        "defines no network or layer `densenet_bcc`",
        "did you mean `densenet_bc`?",
    ),
    (
        "unknown family",
        "network a = densenet_bc(depth = 3)",
        1,
        13,
        "unknown network `densenet_bc`",
        "use densenet_bc from",
    ),
    (
        "unknown family parameter",
        'use densenet_bc from "densenet_bc.dnet"\nnetwork a = densenet_bc(dept = 190)',
        2,
        25,
        "network `densenet_bc` has no parameter `dept`",
        "did you mean `depth`?",
    ),
    (
        "positional family binding",
        'use densenet_bc from "densenet_bc.dnet"\nnetwork a = densenet_bc(190)',
        2,
        25,
        "bound by name",
        "depth = 190",
    ),
    ("self-referential alias", "network a = a(depth = 3)", 1, 13, "defined in terms of itself", None),
    ("network twice", NET + "}\nnetwork a {\n    input 3 x 8\n}", 4, 9, "network `a` is defined twice", None),
    ("no network", "# nothing here\n", 1, 1, "this file defines no network", None),
    ("equals in call", NET + "    dense(4, 12 = 3)\n}", 3, 17, "unexpected `=`", None),
    (
        "unknown lowering",
        "network a {\n    memory fuzed\n    input 3 x 8 x 8\n    dense(2, 4)\n}",
        2,
        12,
        "unknown memory lowering `fuzed`",
        "did you mean `fused`?",
    ),
]


@pytest.mark.parametrize(
    ("source", "line", "col", "message", "hint"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_diagnostic(source, line, col, message, hint, tmp_path):
    path = tmp_path / "spec.dnet"
    path.write_text(source)
    with pytest.raises(dsl.DnetError) as caught:
        compiler.build_graph(dsl.load(path))
    e = caught.value
    text = str(e)
    assert (e.file, e.line, e.col) == (str(path), line, col), text
    assert message in e.message, text
    if hint is not None:
        assert hint in text, text
    # rustc-style: location first, then the line as written with a caret under the spot
    first, *rest = text.splitlines()
    assert first.startswith(f"{path}:{line}:{col}: error: ")
    shown = source.splitlines()[line - 1] if source.splitlines() else ""
    assert any(row.endswith(f"| {shown}") for row in rest), text
    caret_row = next(row for row in rest if "^" in row)
    assert caret_row.index("^") - caret_row.index("|") - 2 == col - 1
    assert "__ANON" not in text and "Token(" not in text and "Traceback" not in text


def test_import_cycle_names_the_chain(tmp_path):
    (tmp_path / "a.dnet").write_text('use b from "b.dnet"\nnetwork a = b()\n')
    (tmp_path / "b.dnet").write_text('use a from "a.dnet"\nnetwork b = a()\n')
    with pytest.raises(dsl.DnetError) as caught:
        dsl.load(tmp_path / "a.dnet")
    e = caught.value
    assert (
        "import cycle: b.dnet -> a.dnet -> b.dnet" in e.message
        or "import cycle: a.dnet -> b.dnet -> a.dnet" in e.message
    )
    assert e.file.endswith(".dnet") and e.line == 1 and e.col == 12


def test_error_in_an_imported_file_points_into_that_file(tmp_path):
    (tmp_path / "family.dnet").write_text(
        "network fam(depth = 10) {\n    input 3 x 32 x 32\n    dense(depth / 4, 12)\n}\n"
    )
    (tmp_path / "member.dnet").write_text('use fam from "family.dnet"\nnetwork member = fam(depth = 11)\n')
    with pytest.raises(dsl.DnetError) as caught:
        dsl.load(tmp_path / "member.dnet")
    e = caught.value
    assert e.file.endswith("family.dnet") and (e.line, e.col) == (3, 11)
    assert "dense(depth / 4, 12)" in str(e)
    assert "depth = 8 or depth = 12" in str(e)


@pytest.mark.parametrize(
    ("assignment", "col", "message", "hint"),
    [
        ("depht=250", 7, "has no parameter `depht`", "did you mean `depth`?"),
        ("depth", 7, "is not of the form NAME=VALUE", "--set depth=250"),
        ("depth=25 0", 16, "bad value for `depth`", None),
        ("depth=(", 14, "bad value for `depth`", "values are numbers"),
    ],
)
def test_set_errors_point_into_the_command_line(assignment, col, message, hint):
    with pytest.raises(dsl.DnetError) as caught:
        dsl.load("densenet_bc", dsl.parse_overrides([assignment]))
    e = caught.value
    assert (e.file, e.line, e.col) == ("command line", 1, col), str(e)
    assert message in e.message
    assert f"--set {assignment}" in str(e)
    if hint:
        assert hint in str(e)


def test_set_of_a_bad_value_is_reported_where_the_spec_uses_it():
    with pytest.raises(dsl.DnetError) as caught:
        dsl.load("densenet_bc", dsl.parse_overrides(["growth=0"]))
    assert caught.value.file.endswith("densenet_bc.dnet")
    assert "`2 * growth` = 0" in caught.value.message


def test_keyword_override_errors():
    with pytest.raises(dsl.DnetError, match="has no parameter `growht`") as caught:
        dsl.load("densenet_bc", growht=24)
    assert "did you mean `growth`?" in str(caught.value)
    with pytest.raises(dsl.DnetError, match="must be a number"):
        dsl.load("densenet_bc", growth=object())


def test_missing_spec_suggests_a_zoo_name():
    with pytest.raises(dsl.DnetError, match="no spec file or zoo model named `densenet12`") as caught:
        dsl.load("densenet12")
    assert "did you mean" in str(caught.value) and "`densenet121`" in str(caught.value)


def test_binary_and_unreadable_files(tmp_path):
    bad = tmp_path / "bad.dnet"
    bad.write_bytes(b"\xff\xfe\x00network")
    with pytest.raises(dsl.DnetError, match="not UTF-8"):
        dsl.load(bad)
    with pytest.raises(dsl.DnetError, match="is not a file"):
        dsl.load(tmp_path)
