"""Mutated zoo specs: every one gives a valid network or a located DnetError, never anything else."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings

from dnetc import compiler, dsl

from .conftest import run_cli
from .fuzzing import SOURCES, bounded, check, grammar_specs, mutate, mutate_bytes


@pytest.mark.parametrize("seed", range(4))
def test_mutated_specs_give_a_network_or_a_located_error(seed):
    rng = random.Random(seed)
    outcomes = {"valid": 0, "error": 0}
    for _ in range(300):  # 1,200 a run; bench/fuzz.py mutates over 10,000
        name, text = rng.choice(sorted(SOURCES.items()))
        for _ in range(rng.randint(1, 3)):
            text = mutate(text, rng)
        outcomes[check(text, str(dsl.zoo_dir() / name))] += 1
    assert outcomes["valid"] > 0 and outcomes["error"] > 0, outcomes


ABSURD = {
    "a long run of signs": "network n { input 3 x 8 x 8 dense(" + "-" * 5000 + "1, 4) }",
    "deeply nested parentheses": "network n { input 3 x 8 x 8 dense(" + "1 + (" * 2000 + "1" + ")" * 2000 + ", 4) }",
    "deeply nested lists": "network n { input 3 x 8 x 8 dense(" + "[" * 3000 + "1" + "]" * 3000 + ", 4) }",
    "deeply nested blocks": "network n { input 3 x 8 x 8 " + "repeat 2 { " * 500 + "dense(1, 4)" + " }" * 500 + " }",
    "an input of 10^5 x 10^5": "network n { input 3 x 100000 x 100000 stem conv(3, 8) dense(2, 4) }",
    "10^5 layers in a block": "network n { input 3 x 8 x 8 dense(100000, 4) }",
    "10^6 layers in 10^3 blocks": "network n { input 3 x 8 x 8 repeat 1000 { dense(1000, 4) } }",
    "a depth of 10^6": "network n(depth = 1000000) { input 3 x 32 x 32 dense((depth - 4) / 6, 12) }",
    "a list of 10^9 items": "network n { input 3 x 8 x 8 let a = [1] * 1000000000 dense(1, 4) }",
    "a number of 40 digits": "network n { input 3 x 8 x 8 dense(99999999999999999999 * 99999999999999999999, 4) }",
    "a growth rate of 10^9": "network n { input 3 x 8 x 8 dense(2, 1000000000) }",
    "100 dimensions": "network n { input 3 x [2] * 100 dense(1, 4) }",
    "a line of 10^6 characters": "network n { input 3 x 8 x 8 " + " " * 1000000 + "dense(1, 4) }",
}


@pytest.mark.parametrize("text", ABSURD.values(), ids=ABSURD.keys())
def test_absurd_specs_end_in_a_clear_error_or_bounded_work(text):
    with bounded(seconds=30, megabytes=512):
        check(text)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_byte_damage_to_every_zoo_file_gives_a_network_or_a_located_error(name, tmp_path):
    """Each zoo file, its neighbours beside it (imports resolve), damaged byte by byte: flipped bits,
    random bytes (invalid UTF-8), cuts and repeated runs."""
    for other, text in SOURCES.items():
        (tmp_path / other).write_text(text)
    rng = random.Random(name)
    original = SOURCES[name].encode()
    target = tmp_path / name
    outcomes = {"valid": 0, "error": 0}
    for _ in range(12):
        data = original
        for _ in range(rng.randint(1, 3)):
            data = mutate_bytes(data, rng)
        target.write_bytes(data)
        outcomes[check(target)] += 1
    assert outcomes["error"] > 0, outcomes


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(grammar_specs())
def test_specs_generated_from_the_grammar_give_a_network_or_a_located_error(text):
    check(text, str(dsl.zoo_dir() / "generated.dnet"))


def test_imports_in_a_cycle_or_a_long_chain_end_in_a_clear_error(tmp_path):
    (tmp_path / "a.dnet").write_text('use b from "b.dnet"\nnetwork a = b()\n')
    (tmp_path / "b.dnet").write_text('use a from "a.dnet"\nnetwork b = a()\n')
    with pytest.raises(dsl.DnetError) as cycle:
        compiler.build_graph(dsl.load(tmp_path / "a.dnet"))
    assert cycle.value.line is not None
    depth = 500
    for i in range(depth):
        (tmp_path / f"n{i}.dnet").write_text(f'use n{i + 1} from "n{i + 1}.dnet"\nnetwork n{i} = n{i + 1}()\n')
    (tmp_path / f"n{depth}.dnet").write_text(f"network n{depth} {{ input 3 x 8 x 8 dense(1, 4) }}\n")
    with bounded(seconds=60):
        try:
            compiler.build_graph(dsl.load(tmp_path / "n0.dnet"))
        except dsl.DnetError as e:
            assert e.line is not None and "imports" in str(e), str(e)


def test_an_input_too_large_for_any_machine_is_a_clear_error(tmp_path):
    """12 PB a sample: past any address space, so the allocation fails at once whatever the machine."""
    spec = tmp_path / "huge.dnet"
    spec.write_text("network huge {\n    input 3 x 100000 x 100000 x 100000\n    stem conv(3, 8)\n    dense(2, 4)\n}\n")
    r = run_cli(str(spec), "--summary")
    assert r.returncode == 1, r.stderr
    assert "out of host memory" in r.stderr and "--set size" in r.stderr and "Traceback" not in r.stderr
