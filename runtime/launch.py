"""Set a training run up from the command line's words: bind the spec to the dataset, make or
reopen the run directory, resume, train, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import compiler
import dsl

from . import DATASETS, checkpoint, version
from .data import load
from .train import Trainer, TrainingError, latest_checkpoint, resolve, run_dir

ADAPTS = ("digits", "fake")  # datasets that take the network's input shape


def bind(spec: str, overrides: dict[str, dsl.Override], dataset: str, augment: bool) -> tuple[dsl.Network, dict]:
    """The network with its class count, input size and dropout bound to the dataset's, unless pinned."""
    info = DATASETS[dataset]
    network = dsl.load(spec, overrides)
    params = network.parameters
    extra: dict[str, Any] = {}
    if "classes" in params and "classes" not in overrides:
        extra["classes"] = info["classes"]
    if "size" in params and "size" not in overrides and dataset != "fake":
        extra["size"] = info["shape"][1]
    dropout = info["recipe"].get("dropout", 0.0)  # the paper's 0.2 when there is no augmentation
    if not augment and dropout and "dropout" in params and "dropout" not in overrides:
        extra["dropout"] = dropout
    if extra:
        network = dsl.load(spec, overrides, **extra)
    g = compiler.build_graph(network)
    output = g.nodes[g.graph["output"]]["shape"]
    if len(output) != 1:  # a spec mistake for this use: exit 2 like every other
        raise dsl.DnetError(
            f"{network.name} ends in feature maps of shape {'x'.join(map(str, output))}, not class scores",
            help="end the network with `head classifier(classes)`",
        )
    if output[0] != info["classes"]:
        raise dsl.DnetError(
            f"{network.name} ends in {output[0]} outputs but {dataset} has {info['classes']} classes",
            help=f"--set classes={info['classes']}" if "classes" in params else "give the spec a `classes` parameter",
        )
    shape = tuple(g.nodes["input"]["shape"])
    if dataset not in ADAPTS and shape != tuple(info["shape"]):
        raise dsl.DnetError(
            f"{network.name} takes {'x'.join(map(str, shape))} inputs but {dataset} images are "
            f"{'x'.join(map(str, info['shape']))}",
            help="--set size=32" if "size" in params else "use a spec whose input matches the dataset",
        )
    return network, extra


def _seed_name(dataset: str, augment: bool) -> str:
    """The paper's name for a dataset and its augmentation: C10, C10+, SVHN, ..."""
    return DATASETS[dataset]["name"] + ("+" if augment and dataset.startswith("cifar") else "")


def train(
    spec: str,
    set_args: list[str],
    dataset: str,
    flags: dict[str, Any],
    out: str | None,
    resume: str | None,
    data_root: str | None,
) -> int:
    previous = None
    if resume is not None:
        path = latest_checkpoint(resume)
        previous = checkpoint.load(path)
        print(f"resuming from {path} (epoch {previous['epoch'] + 1}, step {previous['step']})")
        out = out or str(path.parent.parent if path.parent.name == "checkpoints" else path.parent)
        flags = {**previous["config"], **{k: v for k, v in flags.items() if v is not None}}
        flags.pop("dataset", None)
        set_args = set_args or list(previous.get("overrides", []))  # the network the run was started with
    overrides = dsl.parse_overrides(set_args)
    config = resolve(dataset, **flags)
    network, bound = bind(spec, overrides, dataset, config.augment)
    model = compiler.compile(network, memory=config.memory, batch=config.batch_size, device=config.device)
    shape = tuple(compiler.build_graph(network).nodes["input"]["shape"])
    data = load(dataset, data_root, shape=shape, seed=config.seed)
    folder = run_dir(network.name, dataset, out)
    meta = {
        "spec": network.file and Path(network.file).read_text(encoding="utf-8"),
        "spec_name": network.name,
        "overrides": set_args,
        "bound": dict(bound),
        "version": version(),
    }
    (folder / "config.json").write_text(
        json.dumps({"config": flags | {"dataset": dataset}, **meta}, indent=2, default=str)
    )
    trainer = Trainer(model, data, config, folder, meta)
    if previous is not None:
        trainer.restore(previous)
    print(
        f"training {network.name} on {dataset}: {len(data.train)} images, {config.epochs} epochs, "
        f"batch {config.batch_size}, {config.device}, {config.precision}, memory {model.memory}; run in {folder}"
    )
    result = trainer.run()
    if result["interrupted"]:
        print(
            f"stopped at epoch {result['epoch'] + 1}, step {result['step']}; saved {result['checkpoint']}\n"
            f"resume with: dnetc {spec} --train {dataset} --resume {folder}"
        )
        return 1
    name = _seed_name(dataset, config.augment)
    print(
        f"{name} test error {result['test_error']:.2f}% (accuracy {100 - result['test_error']:.2f}%) "
        f"after {config.epochs} epochs; checkpoints in {folder / 'checkpoints'}"
    )
    return 0


def evaluate(spec: str, set_args: list[str], dataset: str | None, target: str, data_root: str | None) -> int:
    """Evaluate a checkpoint on its dataset's test split, as trained (same overrides and bindings)."""
    path = latest_checkpoint(target)
    state = checkpoint.load(path)
    dataset = dataset or state["config"]["dataset"]
    flags = {k: v for k, v in state["config"].items() if k != "dataset"}
    config = resolve(dataset, **flags)
    network, _ = bind(spec, dsl.parse_overrides(set_args or list(state.get("overrides", []))), dataset, config.augment)
    model = compiler.compile(network)
    shape = tuple(compiler.build_graph(network).nodes["input"]["shape"])
    data = load(dataset, data_root, shape=shape, seed=config.seed)
    trainer = Trainer(model, data, config, path.parent, {})
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise TrainingError(f"{path} does not fit {network.name}: {e}") from None
    loss, error = trainer.evaluate()
    name = _seed_name(dataset, config.augment)
    print(f"{name} test error {error:.2f}% (accuracy {100 - error:.2f}%, loss {loss:.4f}) of {path}")
    return 0
