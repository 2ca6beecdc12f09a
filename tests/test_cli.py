"""The `dnetc` command end to end, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT


def test_validate_prints_one_line(cli, tmp_path):
    r = cli("densenet121", cwd=tmp_path)  # a zoo name works from any folder
    assert r.returncode == 0, r.stderr
    assert r.stdout == "densenet121: 7,978,856 params, 2,834,246,312 MACs, input 3x224x224 -> output 1000\n"


def test_validate_json_and_viz_do_not_import_torch(tmp_path):
    code = (
        "import sys, runtime.cli as c\n"
        f"assert c.main(['densenet_bc_100_12']) == 0\n"
        f"assert c.main(['densenet121', '--json']) == 0\n"
        f"assert c.main(['figure1', '--viz', {str(tmp_path / 'f.dot')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_overrides(cli):
    r = cli("archs/densenet_bc.dnet", "--set", "depth=250", "--set", "growth=24")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("densenet_bc: 15,324,406 params")


def test_bad_spec_exits_2_with_a_diagnostic_and_no_traceback(cli, tmp_path):
    spec = tmp_path / "bad.dnet"
    spec.write_text("network a(depth = 101) {\n    input 3 x 32 x 32\n    dense((depth - 4) / 6, 12)\n}\n")
    r = cli(str(spec))
    assert r.returncode == 2
    assert r.stderr.startswith(f"{spec}:3:11: error: `layers` of `dense` must be an integer")
    assert "depth = 100 or depth = 106 would give an integer" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["densenet12"], "did you mean"),
        (["densenet_bc", "--set", "depht=250"], "did you mean `depth`?"),
        (["densenet_bc", "--set", "depth"], "NAME=VALUE"),
        (["densenet_bc", "--no-such-flag"], "unrecognized arguments"),
        ([], "the following arguments are required: SPEC"),
        (["densenet_bc", "--viz", "out.xyz"], "cannot tell the diagram format"),
    ],
)
def test_usage_and_spec_mistakes_exit_2(cli, args, needle):
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_summary_prints_torchinfo_and_the_block_table(cli):
    r = cli("densenet_bc_100_12", "--summary", "--depth", "2")
    assert r.returncode == 0, r.stderr
    assert "Total params: 769,162" in r.stdout
    assert re.search(r"^denseblock1\s+16\s+12\s+24 -> 216\s+32x32\s+175,680\s+174,593,088$", r.stdout, re.M)
    assert "The graph's counts equal torchinfo's." in r.stdout
    assert "MACs are multiply-adds" in r.stdout


def test_json_matches_torchinfo(cli):
    import torch
    import torchinfo

    from dnetc import compiler

    r = cli("densenet169", "--summary", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {"name", "params", "mult_adds", "input", "output", "blocks"} <= set(data)
    stats = torchinfo.summary(compiler.compile("densenet169"), input_size=(1, 3, 224, 224), verbose=0)
    assert (data["params"], data["mult_adds"]) == (stats.total_params, stats.total_mult_adds)
    assert data["input"] == [3, 224, 224] and data["output"] == [1000]
    assert [b["name"] for b in data["blocks"]][:3] == ["stem", "denseblock1", "transition1"]
    assert data["blocks"][3]["layers"] == 12 and data["blocks"][3]["growth"] == 32
    assert torch.__version__  # torchinfo's table went to stderr, the JSON alone to stdout


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_viz_writes_the_file_named(cli, tmp_path):
    out = tmp_path / "fig.svg"
    r = cli("figure1", "--viz", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text().lstrip().startswith("<?xml") and "denselayer5" in out.read_text()
    r = cli("densenet121", "--viz", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "densenet121.svg").exists()


def test_viz_without_graphviz_writes_the_source_and_says_how_to_install(cli, tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    out = tmp_path / "fig.png"
    r = cli("figure1", "--viz", str(out), env=env)
    assert r.returncode == 1
    assert "apt-get install graphviz" in r.stderr
    assert (tmp_path / "fig.dot").read_text().startswith("digraph figure1")
    assert not out.exists()


def test_version_help_and_zoo(cli):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("dnetc ")
    r = cli("--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "--set depth=250" in r.stdout
    r = cli("zoo")
    assert r.returncode == 0 and "densenet264_k48: 72,686,632 params" in r.stdout


@pytest.mark.skipif(shutil.which("dnetc") is None, reason="the package is not installed")
def test_console_script(tmp_path):
    r = subprocess.run(["dnetc", "figure1"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("figure1: 3,704 params")


def test_summary_prints_training_memory_per_lowering(cli):
    r = cli("densenet_bc_100_12", "--summary", "--depth", "1", "--batch", "32", "--memory", "shared")
    assert r.returncode == 0, r.stderr
    assert "Training memory of one step at batch 32, float32" in r.stdout
    rows = {
        line.split()[0]: line
        for line in r.stdout.splitlines()
        if line.split()[:1] in (["naive"], ["checkpoint"], ["shared"])
    }
    assert set(rows) == {"naive", "checkpoint", "shared"}
    assert "<- this module" in rows["shared"] and "1.00x" in rows["naive"]


def test_json_has_the_memory_estimate(cli):
    r = cli("densenet_bc_190_40", "--json", "--batch", "64")
    data = json.loads(r.stdout)["memory"]
    assert data["batch"] == 64 and data["dtype"] == "float32"
    assert data["shared"]["training"] <= 0.2 * data["naive"]["training"]
    r = cli("densenet_bc_100_12", "--json", "--batch", "0")
    assert r.returncode == 2 and "--batch must be at least 1" in r.stderr
