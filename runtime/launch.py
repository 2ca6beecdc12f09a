"""Set a training run up from the command line's words: bind the spec to the dataset, make or
reopen the run directory, resume, train, report."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

import compiler
import dsl
from dsl.errors import did_you_mean
from dsl.evaluate import literal

from . import DATASETS, checkpoint, distributed, version
from .data import class_count, load
from .train import Config, Trainer, TrainingError, check, latest_checkpoint, resolve, run_dir
from .weights import classifier_modules, load_into, sha256

ADAPTS = ("digits", "fake", "imagenet", "folder", "shapes")  # datasets that take the network's input size


def bind(
    spec: str, overrides: dict[str, dsl.Override], dataset: str, augment: bool, classes: int | None = None
) -> tuple[dsl.Network, dict]:
    """The network with its class count, input size and dropout bound to the dataset's, unless pinned.
    `classes`: the count of a dataset whose table leaves it to the data (image folders)."""
    info = {**DATASETS[dataset], "classes": classes or DATASETS[dataset]["classes"]}
    network = dsl.load(spec, overrides)
    params = network.parameters
    extra: dict[str, Any] = {}
    if "classes" in params and "classes" not in overrides:
        extra["classes"] = info["classes"]
    if "size" in params and "size" not in overrides and dataset != "fake":
        sizes = tuple(info["shape"][1:])  # a spec's `size` is one side (square inputs) or a size per dimension
        extra["size"] = sizes if isinstance(params["size"], tuple | list) else sizes[0]
    dropout = info["recipe"].get("dropout", 0.0)  # the paper's 0.2 when there is no augmentation
    if not augment and dropout and "dropout" in params and "dropout" not in overrides:
        extra["dropout"] = dropout
    if extra:
        network = dsl.load(spec, overrides, **extra)
    g = compiler.build_graph(network)
    output = g.nodes[g.graph["output"]]["shape"]
    if info.get("task") == "segmentation":
        expected = (info["classes"], *g.nodes["input"]["shape"][1:])
        if tuple(output) != expected:
            raise dsl.DnetError(
                f"{network.name} ends in {'x'.join(map(str, output))}, but segmenting {dataset} needs "
                f"{'x'.join(map(str, expected))}: {info['classes']} class scores at every input position",
                help="end the network with `head pixel_classifier(classes)`"
                + (f" and --set classes={info['classes']}" if "classes" in params else ""),
            )
        return network, extra
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


def fit(
    spec: str | Path,
    dataset: str,
    *,
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
    data: str | Path | None = None,
    resume: str | Path | None = None,
    weights: str | Path | None = None,
    reset_classifier: bool = False,
    download: bool = False,
    **flags: Any,
) -> dict[str, Any]:
    """Train from Python as `dnetc SPEC --train DATASET` does, with the same recipes, run directory
    and checkpoints. `flags` are the command line's (epochs, batch_size, lr, device, memory, ...).
    Returns the run's result: test_error, epoch, interrupted, checkpoint and folder."""
    known = {f.name for f in fields(Config)} - {"dataset"}
    for name in flags:
        if name not in known:
            hint = did_you_mean(name, known)
            raise TypeError(f"fit() has no setting `{name}`" + (f"; {hint}" if hint else ""))
    set_args = [f"{k}={literal(v)}" for k, v in (overrides or {}).items()]
    return run(
        str(spec),
        set_args,
        dataset,
        flags,
        out and str(out),
        resume and str(resume),
        data and str(data),
        download,
        weights and str(weights),
        reset_classifier,
    )


def train(*args: Any, **kwargs: Any) -> int:
    """`run` for the command line: its exit status."""
    return run(*args, **kwargs)["code"]


def run(
    spec: str,
    set_args: list[str],
    dataset: str,
    flags: dict[str, Any],
    out: str | None,
    resume: str | None,
    data_root: str | None,
    download: bool = False,
    weights: str | None = None,
    reset_classifier: bool = False,
) -> dict[str, Any]:
    """Train a spec on a dataset as the command line says; `weights` (fine-tuning) start the model
    from a file, its classifier left at its initial values with `reset_classifier`."""
    previous, path = None, None
    if resume is not None:
        path = latest_checkpoint(resume)
        previous = checkpoint.load(path)
        out = out or str(path.parent.parent if path.parent.name == "checkpoints" else path.parent)
        flags = {**previous["config"], **{k: v for k, v in flags.items() if v is not None}}
        flags.pop("dataset", None)
        set_args = set_args or list(previous.get("overrides", []))  # the network the run was started with
    overrides = dsl.parse_overrides(set_args)
    config = resolve(dataset, **flags)
    network, bound = bind(spec, overrides, dataset, config.augment, class_count(dataset, data_root))
    world = distributed.from_environment(config.device)
    if download and world.main:
        from .download import ensure

        ensure(dataset, data_root)
    world.broadcast(None)  # the other ranks wait for the download
    if previous is not None and world.main:
        print(f"resuming from {path} (epoch {previous['epoch'] + 1}, step {previous['step']})")
    finished = False
    try:
        start = (weights, reset_classifier)
        result = _train(spec, set_args, dataset, flags, out, previous, data_root, config, network, bound, world, start)
        finished = True
        return result
    finally:
        distributed.leave(finished)


def _train(
    spec: str,
    set_args: list[str],
    dataset: str,
    flags: dict[str, Any],
    out: str | None,
    previous: dict[str, Any] | None,
    data_root: str | None,
    config: Config,
    network: dsl.Network,
    bound: dict[str, Any],
    world: distributed.World,
    start: tuple[str | None, bool] = (None, False),
) -> dict[str, Any]:
    say = print if world.main else _quiet
    device = str(world.device(config.device))
    torch.manual_seed(config.seed)  # the initial weights are part of a repeatable run
    model = compiler.compile(network, memory=config.memory, batch=config.batch_size // world.size, device=device)
    g = compiler.build_graph(network)
    shape = tuple(g.nodes["input"]["shape"])
    weights, reset_classifier = start
    if weights and previous is None:
        reset = classifier_modules(g) if reset_classifier else ()
        loaded = load_into(model, weights, reset, network.name)
        say(f"started from {loaded} tensors of {weights}" + (", the classifier afresh" if reset else ""))
    data = load(
        dataset,
        data_root,
        shape=shape,
        seed=config.seed,
        augment=config.augment,
        workers=config.workers,
        extra=config.extra_data,
        validation=config.validation,
    )
    # one run directory for all ranks: rank 0 names it (the default holds the time)
    folder = Path(world.broadcast(str(run_dir(network.name, dataset, out)) if world.main else None))
    meta = {
        "spec": network.file and Path(network.file).read_text(encoding="utf-8"),
        "spec_name": network.name,
        "overrides": set_args,
        "bound": dict(bound),
        "version": version(),
        "world_size": world.size,
        "weights": weights and {"file": str(weights), "sha256": sha256(weights), "reset_classifier": reset_classifier},
    }
    if world.main:
        (folder / "config.json").write_text(
            json.dumps({"config": flags | {"dataset": dataset}, **meta}, indent=2, default=str)
        )
    trainer = Trainer(model, data, config, folder, meta, world)
    if previous is not None:
        trainer.restore(previous)
    ranks = f" x {world.size} processes" if world.size > 1 else ""
    say(
        f"training {network.name} on {dataset}: {len(data.train)} images, {config.epochs} epochs, "
        f"batch {config.batch_size}, {device}{ranks}, {config.precision}, memory {model.memory}; run in {folder}"
    )
    result = trainer.run()
    if result["interrupted"]:
        again = f" --nproc {world.size}" if world.size > 1 else ""
        say(
            f"stopped at epoch {result['epoch'] + 1}, step {result['step']}; saved {result['checkpoint']}\n"
            f"resume with: dnetc {spec} --train {dataset} --resume {folder}{again}"
        )
        return {**result, "folder": folder, "code": 1}
    name = _seed_name(dataset, config.augment)
    score = (
        f"test mIoU {result['test_miou']:.3f} (pixel error {result['test_error']:.2f}%)"
        if "test_miou" in result
        else f"test error {result['test_error']:.2f}% (accuracy {100 - result['test_error']:.2f}%)"
    )
    say(f"{name} {score} after {config.epochs} epochs; checkpoints in {folder / 'checkpoints'}")
    return {**result, "folder": folder, "code": 0}


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Ranks other than 0 say nothing: one voice per run."""


def evaluate(
    spec: str,
    set_args: list[str],
    dataset: str | None,
    target: str | None,
    data_root: str | None,
    ten_crop: bool = False,
    weights: str | None = None,
) -> int:
    """Evaluate a checkpoint on its dataset's test split, as trained (same overrides and bindings),
    or, with `weights` and no `target`, a weights file on `dataset` with its recipe's settings;
    `ten_crop`: average the predictions of ten crops of each image (image-folder datasets)."""
    if target:
        path = latest_checkpoint(target)
        state = checkpoint.load(path)
        dataset = dataset or state["config"]["dataset"]
        flags = {k: v for k, v in state["config"].items() if k != "dataset"}
        set_args = set_args or list(state.get("overrides", []))
    else:
        assert weights is not None and dataset is not None
        path, state, flags = Path(weights), None, {}
    config = resolve(dataset, **flags)
    network, _ = bind(spec, dsl.parse_overrides(set_args), dataset, config.augment, class_count(dataset, data_root))
    model = compiler.compile(network)
    shape = tuple(compiler.build_graph(network).nodes["input"]["shape"])
    data = load(dataset, data_root, shape=shape, seed=config.seed, ten_crop=ten_crop, workers=config.workers)
    if state is None:
        load_into(model, path, name=network.name)
    trainer = Trainer(model, data, config, path.parent, {})
    if state is not None:
        try:
            trainer.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise TrainingError(f"{path} does not fit {network.name}: {e}") from None
    loss, error = trainer.evaluate()
    name = _seed_name(dataset, config.augment) + (", ten crops" if ten_crop else "")
    if trainer.iou is not None:
        print(f"{name} test mIoU {sum(trainer.iou) / len(trainer.iou):.3f} (pixel error {error:.2f}%) of {path}")
    else:
        print(f"{name} test error {error:.2f}% (accuracy {100 - error:.2f}%, loss {loss:.4f}) of {path}")
    return 0


def prepare_workers(
    spec: str,
    set_args: list[str],
    dataset: str,
    flags: dict[str, Any],
    processes: int,
    data_root: str | None,
    download: bool,
    weights: str | None,
    reset_classifier: bool,
) -> str:
    """Before data-parallel workers start: check what can be checked in one process (usage, the spec
    against the dataset, the data, a weights file), so that a mistake is told once; fetch the data
    if asked. Returns the network's name."""
    config = resolve(dataset, **flags)
    check(config, processes)
    network, _ = bind(spec, dsl.parse_overrides(set_args), dataset, config.augment, class_count(dataset, data_root))
    if download:
        from .download import ensure

        ensure(dataset, data_root)
    g = compiler.build_graph(network)
    load(dataset, data_root, shape=tuple(g.nodes["input"]["shape"]))  # missing data: say so once
    if weights:  # a file that does not fit: say so once
        from compiler.emit import emit

        load_into(emit(g), weights, classifier_modules(g) if reset_classifier else (), network.name)
    return network.name
