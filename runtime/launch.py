"""Set a training run up once: bind the spec to the dataset, resolve the configuration, make or
reopen the run directory, and hand the resulting `Run` to the trainer; then report.

A `Run` holds every fact of one run (network and graph, dataset record, resolved configuration,
folder, the weights it starts from, the checkpoint it resumes), built once here: the trainer, the
checkpoints and `config.json` read them from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from dnetc import compiler, dsl
from dnetc.dsl.errors import did_you_mean
from dnetc.dsl.evaluate import literal

from . import checkpoint, distributed, version
from .config import default_device
from .data import class_count, load
from .datasets import Dataset, dataset
from .tasks import TASKS
from .tensorfile import load_spec
from .train import Config, Trainer, TrainingError, check, latest_checkpoint, resolve, run_dir
from .weights import classifier_modules, load_into, sha256


def bind(
    spec: str, overrides: dict[str, Any], name: str, augment: bool, classes: int | None = None
) -> tuple[dsl.Network, nx.DiGraph, dict[str, Any]]:
    """The network (and its graph) with its class count, input size and dropout bound to the
    dataset's, unless pinned; and what was bound. `classes`: the count of a dataset whose record
    leaves it to the data (image folders)."""
    ds = dataset(name)
    classes = classes or ds.classes
    network = load_spec(spec, overrides)
    params = network.parameters
    extra: dict[str, Any] = {}
    if "classes" in params and "classes" not in overrides:
        extra["classes"] = classes
    if "size" in params and "size" not in overrides and not ds.info.get("spec_size"):
        sizes = ds.shape[1:]  # a spec's `size` is one side (square inputs) or a size per dimension
        extra["size"] = sizes if isinstance(params["size"], tuple | list) else sizes[0]
    dropout = ds.recipe.get("dropout", 0.0)  # the paper's 0.2 when there is no augmentation
    if not augment and dropout and "dropout" in params and "dropout" not in overrides:
        extra["dropout"] = dropout
    if extra:
        network = load_spec(spec, overrides, **extra)
    g = compiler.build_graph(network)
    shape, output = tuple(g.nodes["input"]["shape"]), tuple(g.nodes[g.graph["output"]]["shape"])
    TASKS[ds.task].check(network, shape, output, ds, classes)  # a spec mistake for this use: exit 2
    if not ds.adapts and shape != ds.shape:
        raise dsl.DnetError(
            f"{network.name} takes {'x'.join(map(str, shape))} inputs but {name} images are "
            f"{'x'.join(map(str, ds.shape))}",
            help="--set size=32" if "size" in params else "use a spec whose input matches the dataset",
        )
    return network, g, extra


def _resolved(
    spec: str, overrides: dict[str, Any], name: str, flags: dict[str, Any], data_root: str | None
) -> tuple[dsl.Network, nx.DiGraph, dict[str, Any], Config]:
    """The spec bound to the dataset, and the configuration resolved for the network's input."""
    augment = flags.get("augment")
    augment = dataset(name).recipe["augment"] if augment is None else augment
    network, g, bound = bind(spec, overrides, name, augment, class_count(name, data_root))
    return network, g, bound, resolve(name, tuple(g.nodes["input"]["shape"]), **flags)


@dataclass
class Run:
    """One training run, resolved once."""

    spec: str  # as the user named it (the resume hint repeats it)
    recorded: list[str]  # the overrides as `--set` takes them: stored in checkpoints, read by --resume
    network: dsl.Network
    graph: nx.DiGraph
    bound: dict[str, Any]  # what the dataset set in the spec (classes, size, dropout)
    dataset: Dataset
    config: Config
    folder: Path
    data_root: str | None = None
    weights: str | None = None  # fine-tuning: the file the model starts from
    reset_classifier: bool = False
    previous: dict[str, Any] | None = field(default=None, repr=False)  # the checkpoint resumed
    resumed_from: Path | None = None
    ten_crop: bool = False  # evaluation: ten crops of each test image (image folders)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.graph.nodes["input"]["shape"])

    def compile(self, batch: int, device: str) -> torch.nn.Module:
        """The module, its lowering chosen for this rank's batch on this device."""
        return compiler.compile(self.graph, memory=self.config.memory, batch=batch, device=device)

    def start_from(self, model: torch.nn.Module) -> str:
        """Load the fine-tuning weights into `model`; what was loaded, said in one line."""
        assert self.weights is not None
        reset = classifier_modules(self.graph) if self.reset_classifier else ()
        loaded = load_into(model, self.weights, reset, self.network.name)
        return f"started from {loaded} tensors of {self.weights}" + (", the classifier afresh" if reset else "")

    def meta(self, world_size: int) -> dict[str, Any]:
        """What every checkpoint and config.json record of the run besides its configuration."""
        weights = self.weights and {
            "file": str(self.weights),
            "sha256": sha256(self.weights),
            "reset_classifier": self.reset_classifier,
        }
        return {
            "spec": self.network.file and Path(self.network.file).read_text(encoding="utf-8"),
            "spec_name": self.network.name,
            "overrides": list(self.recorded),
            "bound": dict(self.bound),
            "version": version(),
            "world_size": world_size,
            "weights": weights,
        }

    def write_config(self, world_size: int) -> None:
        """config.json: the resolved configuration (every default filled in) and the run's record."""
        record = {"config": asdict(self.config), **self.meta(world_size)}
        (self.folder / "config.json").write_text(json.dumps(record, indent=2, default=str))


def plan(
    spec: str,
    name: str,
    *,
    overrides: dict[str, Any] | None = None,
    recorded: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    data_root: str | None = None,
    weights: str | None = None,
    reset_classifier: bool = False,
    world: distributed.World | None = None,
) -> Run:
    """Resolve a run: the checkpoint it resumes (its flags and overrides unless given again), the
    spec bound to the dataset, the configuration for the network's input, the folder (rank 0 names
    it). `overrides` are values by name; `recorded`, their text (the command line's `--set`)."""
    world = world or distributed.World()
    flags = dict(flags or {})
    previous, path = None, None
    if resume is not None:
        path = latest_checkpoint(resume)
        previous = checkpoint.load(path)
        out = out or (path.parent.parent if path.parent.name == "checkpoints" else path.parent)
        flags = {**previous["config"], **{k: v for k, v in flags.items() if v is not None}}
        flags.pop("dataset", None)
        if not overrides and not recorded:  # the network the run was started with
            recorded = list(previous.get("overrides", []))
    if recorded is not None and overrides is None:
        overrides = dsl.parse_overrides(recorded)
    overrides = dict(overrides or {})
    if recorded is None:
        recorded = [f"{k}={literal(v)}" for k, v in overrides.items()]
    network, g, bound, config = _resolved(spec, overrides, name, flags, data_root)
    check(config, world.size)
    # one run directory for all ranks: rank 0 names it (the default holds the time)
    folder = Path(world.broadcast(str(run_dir(network.name, name, out)) if world.main else None))
    return Run(
        spec=spec,
        recorded=list(recorded),
        network=network,
        graph=g,
        bound=bound,
        dataset=dataset(name),
        config=config,
        folder=folder,
        data_root=data_root,
        weights=weights and str(weights),
        reset_classifier=reset_classifier,
        previous=previous,
        resumed_from=path,
    )


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
    return train(
        str(spec),
        dataset,
        overrides=overrides,
        flags=flags,
        out=out,
        resume=resume,
        data_root=data and str(data),
        download=download,
        weights=weights and str(weights),
        reset_classifier=reset_classifier,
    )


def train(spec: str, name: str, *, download: bool = False, **options: Any) -> dict[str, Any]:
    """Train a spec on a dataset (`options` are `plan`'s), fetching the data first with `download`;
    the result holds the exit status under `code` (1: stopped by a signal, resumable)."""
    flags = options.get("flags") or {}
    world = distributed.from_environment(flags.get("device") or default_device())
    finished = False
    try:
        if download and world.main:
            from .download import ensure

            ensure(name, options.get("data_root"))
        world.broadcast(None)  # the other ranks wait for the download
        result = _train(plan(spec, name, world=world, **options), world)
        finished = True
        return result
    finally:
        distributed.leave(finished)


def _train(run: Run, world: distributed.World) -> dict[str, Any]:
    say = print if world.main else _quiet
    c = run.config
    if run.previous is not None:
        say(f"resuming from {run.resumed_from} (epoch {run.previous['epoch'] + 1}, step {run.previous['step']})")
    trainer = Trainer(run, world)
    if world.main:
        run.write_config(world.size)
    ranks = f" x {world.size} processes" if world.size > 1 else ""
    say(
        f"training {run.network.name} on {c.dataset}: {len(trainer.data.train)} images, {c.epochs} epochs, "
        f"batch {c.batch_size}, {trainer.device}{ranks}, {c.precision}, memory {trainer.model.memory}; "
        f"run in {run.folder}"
    )
    result = trainer.train()
    if result["interrupted"]:
        again = f" --nproc {world.size}" if world.size > 1 else ""
        say(
            f"stopped at epoch {result['epoch'] + 1}, step {result['step']}; saved {result['checkpoint']}\n"
            f"resume with: dnetc {run.spec} --train {c.dataset} --resume {run.folder}{again}"
        )
        return {**result, "folder": run.folder, "code": 1}
    if "test_error" not in result:  # --max-steps: stopped where asked, resumable
        say(f"stopped after {c.max_steps} steps as asked (epoch {result['epoch'] + 1}); saved {result['checkpoint']}")
        return {**result, "folder": run.folder, "code": 0}
    task = TASKS[run.dataset.task]
    say(
        f"{run.dataset.title(c.augment)} {task.score(result)} after {c.epochs} epochs; "
        f"checkpoints in {run.folder / 'checkpoints'}"
    )
    return {**result, "folder": run.folder, "code": 0}


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Ranks other than 0 say nothing: one voice per run."""


def evaluate(
    spec: str,
    set_args: list[str],
    name: str | None,
    target: str | None,
    data_root: str | None,
    ten_crop: bool = False,
    weights: str | None = None,
) -> int:
    """Evaluate a checkpoint's inference weights (the EMA's when it has them) on its dataset's test
    split, as trained (same overrides and bindings), or, with `weights` and no `target`, a weights
    file on `name` with its recipe's settings; `ten_crop`: average the predictions of ten crops of
    each image (image-folder datasets)."""
    if target:
        path = latest_checkpoint(target)
        state = checkpoint.load(path)
        name = name or state["config"]["dataset"]
        flags = {k: v for k, v in state["config"].items() if k != "dataset"}
        set_args = set_args or list(state.get("overrides", []))
    else:
        assert weights is not None and name is not None
        path, state, flags = Path(weights), None, {}
    flags |= {"ema": None, "max_steps": None}  # one set of weights, evaluated
    run = plan(spec, name, recorded=set_args, flags=flags, out=path.parent, data_root=data_root)
    run.ten_crop = ten_crop
    trainer = Trainer(run)
    if state is None:
        load_into(trainer.model, path, name=run.network.name)
    else:
        try:
            trainer.model.load_state_dict(checkpoint.inference_weights(state))
        except RuntimeError as e:
            raise TrainingError(f"{path} does not fit {run.network.name}: {e}") from None
    scores = trainer.evaluate()
    title = run.dataset.title(run.config.augment) + (", ten crops" if ten_crop else "")
    print(f"{title} {trainer.task.score(scores)}, test loss {scores['test_loss']:.4f}: {path}")
    if run.graph.graph["exits"]:  # a multi-exit network: its anytime and budgeted tables
        from dnetc.compiler.report import exits

        from . import anytime

        result = anytime.evaluate(trainer, exits(run.graph))
        print()
        print(anytime.tables(result))
        if target:  # beside the run's config.json
            written = (path.parent.parent if path.parent.name == "checkpoints" else path.parent) / "anytime.json"
            written.write_text(json.dumps(result, indent=2))
            print(f"\nboth tables in {written}")
    return 0


def prepare_workers(
    spec: str,
    set_args: list[str],
    name: str,
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
    network, g, _, config = _resolved(spec, dsl.parse_overrides(set_args), name, flags, data_root)
    check(config, processes)
    if download:
        from .download import ensure

        ensure(name, data_root)
    load(name, data_root, shape=tuple(g.nodes["input"]["shape"]))  # missing data: say so once
    if weights:  # a file that does not fit: say so once
        load_into(compiler.compile(g), weights, classifier_modules(g) if reset_classifier else (), network.name)
    return network.name
