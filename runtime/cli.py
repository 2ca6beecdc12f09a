"""The `dnetc` command: validate, report, draw (and later train) a .dnet spec.

Exit codes: 0 ok, 1 runtime failure, 2 bad spec or usage. Validation, `--json` and `--viz`
never import torch; `--summary` does, for torchinfo's table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import dsl
from runtime import version

DTYPES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}

EPILOG = """\
examples:
  dnetc densenet121                          validate a zoo model: params, MACs, input -> output
  dnetc archs/densenet_bc.dnet --set depth=250 --set growth=24
  dnetc densenet_bc_100_12 --summary         torchinfo's table, a per-block table, training memory
  dnetc densenet_bc_190_40 --summary --batch 64 --memory shared
  dnetc densenet121 --json                   the same figures as JSON
  dnetc figure1 --viz figure1.svg            a diagram (svg, png, pdf or dot)
  dnetc densenet169 --viz --viz-detail block
  dnetc zoo                                  the model zoo with params and MACs

SPEC is a .dnet file or the name of a zoo model. The language is described in README.md.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnetc",
        description="The DenseNet architecture language and compiler.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", metavar="SPEC", help="a .dnet file or a zoo model name (`dnetc zoo` lists them)")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="override a parameter of the network (repeatable)",
    )
    p.add_argument("--summary", action="store_true", help="print torchinfo's table and the per-block table")
    p.add_argument("--depth", type=int, default=3, metavar="N", help="how deep torchinfo's table goes (default 3)")
    p.add_argument("--json", action="store_true", help="print params, MACs, shapes, blocks and memory as JSON")
    p.add_argument(
        "--memory",
        choices=("naive", "checkpoint", "shared", "auto"),
        default=None,
        help="how dense blocks are lowered (default: the spec's `memory`, else naive)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=64,
        metavar="N",
        help="batch size for the training-memory estimate and `--memory auto` (default 64)",
    )
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="element type for the training-memory estimate (default float32)",
    )
    p.add_argument(
        "--viz",
        nargs="?",
        const="",
        metavar="FILE",
        help="draw the network; the extension picks the format: svg (default), png, pdf, dot",
    )
    p.add_argument(
        "--viz-detail",
        choices=("auto", "layer", "block"),
        default="auto",
        help="one node per dense layer, or per block; auto picks by size",
    )
    t = p.add_argument_group("training (defaults: the dataset's recipe, see runtime/datasets.toml)")
    t.add_argument(
        "--train", metavar="DATASET", help="train on cifar10, cifar100, svhn, imagenet, folder, digits or fake"
    )
    t.add_argument("--data", metavar="DIR", help="where datasets live (default $DNETC_DATA or ~/.cache/dnetc/data)")
    t.add_argument(
        "--download", action="store_true", help="fetch the dataset's official files first (md5 checked, resumable)"
    )
    t.add_argument("--out", metavar="DIR", help="the run directory (default runs/SPEC-DATASET-TIME)")
    t.add_argument("--resume", metavar="RUN_DIR|FILE", help="continue a run exactly where it stopped")
    t.add_argument("--eval", metavar="RUN_DIR|FILE", help="only evaluate a checkpoint on its test set")
    t.add_argument("--ten-crop", action="store_true", help="with --eval: average ten crops per image (imagenet)")
    t.add_argument("--extra-data", action="store_true", default=None, help="SVHN: train on train + extra")
    t.add_argument("--validation", type=int, metavar="N", help="hold N training images out (SVHN default 6000)")
    t.add_argument("--workers", type=int, metavar="N", help="data-loading processes for image folders")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--schedule", choices=("step", "cosine"))
    t.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        default=None,
        help="no flips or crops (dropout 0.2 then, unless the spec sets it)",
    )
    t.add_argument("--seed", type=int, help="default 0; recorded in the run")
    t.add_argument("--deterministic", action="store_true", default=None, help="repeatable runs on one machine")
    t.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    t.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="autocast (default bf16 on CUDA)")
    t.add_argument("--channels-last", action="store_true", default=None)
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    t.add_argument("--checkpoint-every", type=float, metavar="MINUTES", help="also checkpoint within epochs")
    t.add_argument("--keep", type=int, help="how many epoch checkpoints to keep (default 3)")
    t.add_argument(
        "--accumulate",
        type=int,
        metavar="N",
        help="split each batch into N micro-batches whose gradients add up (less memory, same batch)",
    )
    t.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="data-parallel training in N processes on this machine (one per GPU); torchrun for many machines",
    )
    t.add_argument("--sync-bn", action="store_true", default=None, help="batch norm statistics over all processes")
    p.add_argument("--version", action="version", version=f"dnetc {version()}")
    return p


def zoo_command(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="dnetc zoo", description="List the model zoo with params and MACs.")
    p.add_argument("--markdown", action="store_true", help="print the table in Markdown, as README.md shows it")
    args = p.parse_args(argv)
    from compiler import build_graph, report

    graphs = [build_graph(dsl.load(name)) for name in dsl.zoo_names()]
    if args.markdown:
        print(report.zoo_table(graphs))
    else:
        for g in graphs:
            print(report.one_line(g))
    return 0


def run(argv: Sequence[str]) -> int:
    if argv and argv[0] == "zoo":
        return zoo_command(argv[1:])
    args = parser().parse_args(argv)
    from compiler import build_graph, report

    if args.batch < 1:
        print(f"error: --batch must be at least 1, not {args.batch}", file=sys.stderr)
        return 2
    network = dsl.load(args.spec, dsl.parse_overrides(args.overrides))
    g = build_graph(network)
    memory = args.memory or network.memory or "naive"
    if args.json:
        data = report.to_json(g)
        data["memory"] = report.memory_json(g, args.batch, args.dtype)
        print(json.dumps(data, indent=2))
    elif not args.summary and not args.train and not args.eval:
        print(report.one_line(g))
    if args.summary:
        summary(g, args.depth, memory, args.batch, args.dtype, quiet_table=args.json)
    if args.viz is not None:
        code = draw(g, args.viz or f"{network.name}.svg", args.viz_detail)
        if code:
            return code
    if args.train or args.eval:
        return train_command(args, argv)
    return 0


def train_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from runtime.checkpoint import CheckpointError
    from runtime.data import DataError
    from runtime.launch import evaluate, train
    from runtime.train import TrainingError, UsageError

    names = (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "schedule",
        "augment",
        "seed",
        "deterministic",
        "device",
        "precision",
        "channels_last",
        "compile",
        "checkpoint_every",
        "keep",
        "memory",
        "sync_bn",
        "accumulate",
        "workers",
        "extra_data",
        "validation",
    )
    flags = {n: getattr(args, n) for n in names}
    try:
        if args.eval:
            return evaluate(args.spec, args.overrides, args.train, args.eval, args.data, args.ten_crop)
        if args.nproc is not None and args.nproc != 1:
            return _spawn(args, argv, flags)
        return train(args.spec, args.overrides, args.train, flags, args.out, args.resume, args.data, args.download)
    except (DataError, CheckpointError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _spawn(args: argparse.Namespace, argv: Sequence[str], flags: dict) -> int:
    """`--nproc N`: check what can be checked here (usage, the spec against the dataset, the data),
    so that a mistake is told once, fix the run directory, then start the N workers."""
    import os

    from compiler import build_graph
    from runtime import distributed
    from runtime.data import class_count, load
    from runtime.launch import bind
    from runtime.train import check, resolve, run_dir

    if args.nproc < 1 or not args.train:
        print("error: --nproc takes a number of processes of at least 1, with --train", file=sys.stderr)
        return 2
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("error: --nproc inside torchrun: give one or the other", file=sys.stderr)
        return 2
    config = resolve(args.train, **flags)
    check(config, args.nproc)
    classes = class_count(args.train, args.data)
    network, _ = bind(args.spec, dsl.parse_overrides(args.overrides), args.train, config.augment, classes)
    if args.download:
        from runtime.download import ensure

        ensure(args.train, args.data)
    load(args.train, args.data, shape=tuple(build_graph(network).nodes["input"]["shape"]))  # missing data: say so once
    rest, skip = [], False
    for a in argv:
        if skip or a == "--nproc" or a.startswith("--nproc="):
            skip = a == "--nproc" and not skip
            continue
        rest.append(a)
    if args.out is None and args.resume is None:
        rest += ["--out", str(run_dir(network.name, args.train, None))]
    return distributed.launch(rest, args.nproc)


def summary(g, depth: int, memory: str, batch: int, dtype: str, quiet_table: bool = False) -> None:
    """torchinfo's table of the emitted module, the graph's per-block table (checked against each
    other), and the estimated training memory of each lowering."""
    import torchinfo

    from compiler import report
    from compiler.emit import emit
    from compiler.memory import choose_lowering

    lowering = choose_lowering(g, memory, batch)
    model = emit(g, lowering)
    shape = (1, *g.nodes["input"]["shape"])
    stats = torchinfo.summary(
        model, input_size=shape, depth=depth, verbose=0, col_names=("output_size", "num_params", "mult_adds")
    )
    out = sys.stderr if quiet_table else sys.stdout
    print(stats, file=out)
    print(file=out)
    print(report.unit_table(g), file=out)
    print(file=out)
    agree = stats.total_params == g.graph["params"] and stats.total_mult_adds == g.graph["macs"]
    print(
        "The graph's counts "
        + (
            "equal torchinfo's."
            if agree
            else f"DIFFER from torchinfo's ({stats.total_params:,} params, {stats.total_mult_adds:,} MACs)."
        ),
        file=out,
    )
    print(report.CONVENTION, file=out)
    print(file=out)
    print(report.memory_table(g, batch, dtype, lowering), file=out)


def draw(g, path: str, detail: str) -> int:
    import graphviz

    from compiler import viz

    fmt = path.rsplit(".", 1)[-1].lower() if "." in Path(path).name else ""
    if fmt not in viz.FORMATS:
        print(
            f"error: cannot tell the diagram format of `{path}`: end it in " + ", ".join(f".{f}" for f in viz.FORMATS),
            file=sys.stderr,
        )
        return 2
    dot = viz.diagram(g, detail)  # type: ignore[arg-type]
    try:
        viz.render(dot, path)
    except graphviz.ExecutableNotFound:
        source = str(Path(path).with_suffix(".dot"))
        viz.render(dot, source)
        print(
            f"error: Graphviz's `dot` program is not installed, so `{path}` was not drawn.\n"
            f"  wrote the diagram's source to `{source}`\n"
            "  = help: install Graphviz (Debian/Ubuntu: `apt-get install graphviz`, macOS: `brew install graphviz`,"
            f" conda: `conda install graphviz`), then run `dot -T{fmt} {source} -o {path}` or this command again",
            file=sys.stderr,
        )
        return 1
    except OSError as e:
        print(f"error: cannot write `{path}`: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv)
    except dsl.DnetError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
