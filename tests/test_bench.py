"""The benchmark scripts stay runnable: CPU dry runs of each."""

from __future__ import annotations

import json

import pytest

from .conftest import bench
from .test_memory import ROUNDS_DIFFERENTLY


def test_gpu_benchmark_dry_run(tmp_path):
    bench("gpu.py", "--device", "cpu", "--steps", "1", "--batch", "4", "--compare-batch", "1", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "gpu-cpu.json").read_text())["rows"]
    assert [row["config"] for row in rows] == [
        "fp32, naive",
        "bf16 + channels_last",
        "bf16 + channels_last, shared",
        "fp32, shared",
    ]
    assert all(row["s_per_iter"] > 0 for row in rows)
    versus = json.loads((tmp_path / "gpu-cpu.json").read_text())["compare"]
    assert [row["config"] for row in versus] == [
        "torchvision densenet121, fp32",
        "dnetc densenet121, fp32",
        "torchvision densenet121, bf16 + channels_last",
        "dnetc densenet121, bf16 + channels_last",
    ]
    assert "authors (Lua Torch, TitanX) | 0.156" in (tmp_path / "gpu-cpu.md").read_text()


def test_lowerings_benchmark_agrees_with_naive_on_the_cpu(tmp_path):
    bench("lowerings.py", "--small", "--steps", "1", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "lowerings-cpu.json").read_text())
    assert [row["name"] for row in rows] == [
        "densenet_bc group(2) silu",
        "peleenet",
        "fc_densenet103",
        "densenet121_3d",
    ]
    for row in rows:
        own = row["lowerings"]["naive"]["error_vs_float64"]  # naive's own float32 error
        for lowering, entry in row["lowerings"].items():
            if lowering in ROUNDS_DIFFERENTLY:  # its arithmetic in another order: as close to the truth as naive
                assert entry["error_vs_float64"] <= 3 * own + 1e-6, (row["name"], lowering, entry, own)
            else:
                assert entry["max_relative_difference"] <= 1e-4, (row["name"], lowering)


QUICK = ["--device", "cpu", "--quick", "--steps", "1", "--warmup", "1"]


def test_speed_harness_runs_interleaved_against_torchvision(tmp_path):
    bench("speed.py", *QUICK, "--no-compile", "--out", str(tmp_path))
    result = json.loads((tmp_path / "speed-cpu.json").read_text())
    rows = result["rows"]
    assert {(row["impl"], row["name"]) for row in rows} >= {("torchvision", "fp32"), ("dnetc", "fp32")}
    assert ("dnetc", "bf16 + channels_last, shared") in {(row["impl"], row["name"]) for row in rows}
    dnetc = next(row for row in rows if row["impl"] == "dnetc" and row["name"] == "fp32")
    assert dnetc["vs_torchvision_fp32"] > 0 and dnetc["images_per_s"] > 0
    assert result["left_out"] == []


def test_speed_harness_keeps_to_its_budget(tmp_path):
    """Past the budget no further row is built: the first always is, the others are named as left out."""
    bench("speed.py", *QUICK, "--budget", "0", "--out", str(tmp_path))
    result = json.loads((tmp_path / "speed-cpu.json").read_text())
    assert [row["name"] for row in result["rows"]] == ["fp32"]
    assert "densenet121 dnetc bf16 + channels_last + compile(default)" in result["left_out"]
    assert "Left out, past the time budget" in (tmp_path / "speed-cpu.md").read_text()


def test_trainer_benchmark_dry_run(tmp_path):
    """The trainer against the isolated step and a hand loop, one short round (the figures: bench/results)."""
    bench("trainer.py", "--device", "cpu", "--steps", "2", "--rounds", "1", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "trainer-cpu.json").read_text())["rows"]
    assert [row["kind"] for row in rows] == ["isolated", "loop", "trainer"]
    trainer = rows[-1]
    assert trainer["s_per_iter"] > 0 and 0 <= trainer["data_share"] < 1 and trainer["vs_hand_loop"] > 0


def test_graphs_and_decode_benchmarks_dry_run(tmp_path):
    quick = ["--steps", "5", "--depth", "10", "--lowerings", "shared", "--dropouts", "0.2", "--precisions", "fp32"]
    bench("graphs.py", "--device", "cpu", *quick, "--batch", "8", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "graphs-cpu.json").read_text())
    assert len(rows) == 1 and all(r["graphs_captured"] == 0 and r["max_relative_difference"] == 0 for r in rows)
    bench("decode.py", "--images", "12", "--out", str(tmp_path))
    result = json.loads((tmp_path / "decode-cpu.json").read_text())
    assert result["per_core"] > 0 and result["reading_per_core"] > result["per_core"]
    assert result["device_vs_workers_within_one_level"] > 0.99


def test_language_server_benchmark_runs_in_process_and_over_stdio(tmp_path):
    """bench/lsp.py on one family, one edit (docs/editor.md's figures come from the whole zoo)."""
    bench("lsp.py", "--repeats", "1", "--files", "densenet_bc", "--out", str(tmp_path))
    result = json.loads((tmp_path / "lsp-cpu.json").read_text())
    (row,) = result["rows"]
    assert row["file"] == "densenet_bc.dnet" and row["nodes"] > 100 and row["hovers"] >= 5
    assert result["over_stdio"]["edit_to_diagnostics_ms"]["median"] > 0


def test_weights_benchmark_loads_a_timm_model_both_ways(tmp_path):
    pytest.importorskip("timm")
    bench("weights.py", "--models", "ese_vovnet19b_dw", "--size", "32", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "weights-cpu.json").read_text())["results"]
    assert [(r["file"], r["mapped"]) for r in rows] == [
        ("pth", "the file's own order"),
        ("safetensors", "the order of timm's VoVNet"),
    ]
    assert all(r["diff"] < 1e-4 for r in rows)
