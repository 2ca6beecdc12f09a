"""The `dnetc` command line: its arguments, which stage each asks for, and the exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 bad spec or usage; a user's mistake is one message, never a
traceback. Validation, `--json` and `--viz` never import torch; `--summary` does, for torchinfo's
table. What the commands write is in `outputs.py`, training and evaluation in `launch.py`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import fields

from dnetc import dsl
from dnetc.compiler.estimate import DTYPE_BYTES
from dnetc.compiler.lowerings import LOWERINGS, choices
from dnetc.runtime import version
from dnetc.runtime.config import COMPILE_MODES, DECODERS, PRECISIONS
from dnetc.runtime.optim import OPTIMIZERS
from dnetc.runtime.outputs import EMIT_FORMATS, EXPORT_FORMATS, draw, emit_source, export, summary
from dnetc.runtime.tensorfile import TensorFileError, check, is_tensorfile, load_spec, recorded_overrides
from dnetc.runtime.weights import WeightsError

EPILOG = """\
examples:
  dnetc densenet121                          validate a zoo model: params, MACs, input -> output
  dnetc archs/densenet_bc.dnet --set depth=250 --set growth=24
  dnetc densenet_bc_100_12 --summary         torchinfo's table, a per-block table, training memory
  dnetc densenet_bc_190_40 --summary --batch 64 --memory shared
  dnetc densenet121 --json                   the same figures as JSON
  dnetc figure1 --viz figure1.svg            a diagram (svg, png, pdf or dot)
  dnetc densenet169 --viz --viz-detail block
  dnetc densenet121 --emit python net.py      standalone PyTorch source (imports only torch)
  dnetc densenet121 --weights tv.pth --export onnx densenet121.onnx
  dnetc densenet_bc --weights runs/RUN/checkpoints/best.pt --export safetensors bc.safetensors
  dnetc bc.safetensors --summary             the network rebuilt from the file's metadata, its weights checked
  dnetc densenet121 --weights tv.pth --reset-classifier --set classes=10 --train folder
  dnetc zoo                                  the model zoo with params and MACs
  dnetc fmt [--check] FILES                  lay .dnet files out canonically
  dnetc schema                               the JSON Schema of a validated spec
  dnetc lsp                                  the language server for editors, over stdio

SPEC is a .dnet file, the name of a zoo model, or a .safetensors file that dnetc wrote.
The language is taught in docs/language.md.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnetc",
        description="The DenseNet architecture language and compiler.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "spec", metavar="SPEC", help="a .dnet file, a zoo model (`dnetc zoo` lists them) or a dnetc .safetensors file"
    )
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
        choices=choices(),
        default=None,
        help="how dense blocks are lowered (default: the spec's `memory`, else naive): "
        + "; ".join(f"{x.name}: {x.summary}" for x in LOWERINGS.values())
        + "; auto: the fastest that fits the device's memory",
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
        choices=tuple(DTYPE_BYTES),
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
        "--emit",
        nargs="+",
        metavar=("FORMAT", "FILE"),
        help="write the network as source: `python` (imports only torch) to FILE, or to stdout",
    )
    p.add_argument(
        "--export",
        nargs=2,
        metavar=("FORMAT", "FILE"),
        help="write the network with --weights if given: `onnx` (dynamic batch); `safetensors` (the weights, the "
        "spec in the metadata: the file alone rebuilds the network); `condensed`: a trained CondenseNet's "
        "--weights converted to its inference form",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="start from these weights: a dnetc checkpoint, a state_dict, a .safetensors file (dnetc's, timm's, "
        "anyone's), or torchvision's DenseNet .pth",
    )
    p.add_argument(
        "--reset-classifier",
        action="store_true",
        help="with --weights: leave the classifier at its initial values (another class count)",
    )
    p.add_argument(
        "--viz-detail",
        choices=("auto", "layer", "block"),
        default="auto",
        help="one node per dense layer, or per block; auto picks by size",
    )
    t = p.add_argument_group("training (defaults: the dataset's recipe, see runtime/datasets.toml)")
    t.add_argument(
        "--train", metavar="DATASET", help="train on cifar10, cifar100, svhn, imagenet, folder, digits, shapes or fake"
    )
    t.add_argument("--data", metavar="DIR", help="where datasets live (default $DNETC_DATA or ~/.cache/dnetc/data)")
    t.add_argument(
        "--download", action="store_true", help="fetch the dataset's official files first (md5 checked, resumable)"
    )
    t.add_argument("--out", metavar="DIR", help="the run directory (default runs/SPEC-DATASET-TIME)")
    t.add_argument("--resume", metavar="RUN_DIR|FILE", help="continue a run exactly where it stopped")
    t.add_argument(
        "--eval",
        nargs="?",
        const="",
        metavar="RUN_DIR|FILE",
        help="only evaluate a checkpoint on its test set (or --weights on --train's)",
    )
    t.add_argument("--ten-crop", action="store_true", help="with --eval: average ten crops per image (imagenet)")
    t.add_argument("--extra-data", action="store_true", default=None, help="SVHN: train on train + extra")
    t.add_argument("--validation", type=int, metavar="N", help="hold N training images out (SVHN default 6000)")
    t.add_argument("--workers", type=int, metavar="N", help="data-loading processes for image folders")
    t.add_argument(
        "--decode",
        choices=DECODERS,
        help="image folders: decode training JPEGs in the workers or on the device (default: device on CUDA)",
    )
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
    t.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        help="autocast (default: by device and input size, docs/performance.md)",
    )
    t.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the channels-last layout for 2D networks (default: by device and input size)",
    )
    t.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        metavar="MODE",
        help=f"torch.compile the model ({', '.join(COMPILE_MODES)}; default: default)",
    )
    t.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay each training step as one CUDA graph (default: on CUDA wherever it applies)",
    )
    t.add_argument("--optimizer", choices=tuple(OPTIMIZERS), help="default sgd, the paper's (adamw: lr 1e-3, wd 0.05)")
    t.add_argument("--ema", type=float, metavar="DECAY", help="evaluate and save an average of the weights (0.999)")
    t.add_argument(
        "--max-steps", type=int, metavar="N", help="stop after N steps, saving a resumable checkpoint (smoke tests)"
    )
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
    p.add_argument("--markdown", action="store_true", help="print the table in Markdown, as docs/zoo.md shows it")
    args = p.parse_args(argv)
    from dnetc.compiler import build_graph, report

    graphs = [build_graph(dsl.load(name)) for name in dsl.zoo_names()]
    if args.markdown:
        print(report.zoo_table(graphs))
    else:
        for g in graphs:
            print(report.one_line(g))
    return 0


def schema_command(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="dnetc schema",
        description="Print the JSON Schema of a validated spec (what `--json` reports under `spec`).",
    )
    p.parse_args(argv)
    print(json.dumps(dsl.schema(), indent=2))
    return 0


def lsp_command(argv: Sequence[str]) -> int:
    from dnetc.runtime.lsp import main as serve

    return serve(list(argv))


COMMANDS = {"zoo": zoo_command, "schema": schema_command, "lsp": lsp_command}


def usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(argv: Sequence[str]) -> int:
    if argv and argv[0] == "fmt":
        from dnetc.runtime.fmt import main as fmt_command

        return fmt_command(argv[1:])
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    args = parser().parse_args(argv)
    from dnetc.compiler import build_graph, report

    if args.batch < 1:
        return usage_error(f"--batch must be at least 1, not {args.batch}")
    if args.emit and (args.emit[0] not in EMIT_FORMATS or len(args.emit) > 2):
        return usage_error(f"--emit takes a format ({', '.join(EMIT_FORMATS)}) and an optional FILE")
    if args.export and args.export[0] not in EXPORT_FORMATS:
        return usage_error(f"--export takes a format ({', '.join(EXPORT_FORMATS)}) and a FILE")
    if args.reset_classifier and not args.weights:
        return usage_error("--reset-classifier goes with --weights FILE")
    if args.eval == "" and not (args.weights and args.train):
        return usage_error("--eval takes a run directory or checkpoint, or evaluates --weights FILE on --train DATASET")
    if args.weights and (args.resume or args.eval):
        return usage_error("--weights starts a model; --resume and --eval RUN_DIR|FILE take theirs from the checkpoint")
    if is_tensorfile(args.spec):  # a network with its weights: rebuilt from the file, its weights loaded
        args.weights = args.weights or args.spec
    network = load_spec(args.spec, dsl.parse_overrides(args.overrides))
    g = build_graph(network)
    if is_tensorfile(args.spec) and not args.overrides:  # as written: the same parameter count
        check(args.spec, g)
    memory = args.memory or network.memory or "naive"
    quiet = args.json or (args.emit is not None and len(args.emit) == 1)
    if args.json:
        data = report.to_json(g)
        data["memory"] = report.memory_json(g, args.batch, args.dtype)
        print(json.dumps(data, indent=2))
    elif not (args.summary or args.train or args.eval is not None or args.emit or args.export):
        print(report.one_line(g))
    if args.summary:
        summary(g, args.depth, memory, args.batch, args.dtype, quiet_table=quiet, weights=args.weights)
    if args.viz is not None:
        code = draw(g, args.viz or f"{network.name}.svg", args.viz_detail)
        if code:
            return code
    if args.emit:
        code = emit_source(g, args.emit[1] if len(args.emit) > 1 else None, memory, args.overrides)
        if code:
            return code
    if args.export:

        def converted() -> object:  # the family's other form: CondenseNet's inference network
            return build_graph(load_spec(args.spec, dsl.parse_overrides(args.overrides), converted=True))

        recorded = [*recorded_overrides(args.spec), *args.overrides] if is_tensorfile(args.spec) else args.overrides
        code = export(g, args.export[0], args.export[1], args.weights, args.reset_classifier, converted, recorded)
        if code:
            return code
    if args.train or args.eval is not None:
        return train_command(args, argv)
    return 0


def train_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from dnetc.runtime.checkpoint import CheckpointError
    from dnetc.runtime.config import Config, TrainingError, UsageError
    from dnetc.runtime.data import DataError
    from dnetc.runtime.launch import evaluate, train

    flags = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}  # the run flags
    try:
        if args.eval is not None:
            return evaluate(
                args.spec, args.overrides, args.train, args.eval, args.data, args.ten_crop, weights=args.weights
            )
        if args.nproc is not None and args.nproc != 1:
            return _spawn(args, argv, flags)
        return train(
            args.spec,
            args.train,
            recorded=args.overrides,
            flags=flags,
            out=args.out,
            resume=args.resume,
            data_root=args.data,
            download=args.download,
            weights=args.weights,
            reset_classifier=args.reset_classifier,
        )["code"]
    except (DataError, CheckpointError, UsageError, TensorFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a lost folder: one line (a checkpoint's says the previous one stands)
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


def _spawn(args: argparse.Namespace, argv: Sequence[str], flags: dict) -> int:
    """`--nproc N`: check the usage and what the workers will need (once, here), fix the run
    directory, then start the N workers."""
    import os

    from dnetc.runtime import distributed
    from dnetc.runtime.launch import prepare_workers
    from dnetc.runtime.train import run_dir

    if args.nproc < 1 or not args.train:
        print("error: --nproc takes a number of processes of at least 1, with --train", file=sys.stderr)
        return 2
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("error: --nproc inside torchrun: give one or the other", file=sys.stderr)
        return 2
    name = prepare_workers(
        args.spec,
        args.overrides,
        args.train,
        flags,
        args.nproc,
        args.data,
        args.download,
        args.weights,
        args.reset_classifier,
    )
    rest, skip = [], False
    for a in argv:
        if skip or a == "--nproc" or a.startswith("--nproc="):
            skip = a == "--nproc" and not skip
            continue
        rest.append(a)
    if args.out is None and args.resume is None:
        rest += ["--out", str(run_dir(name, args.train, None))]
    return distributed.launch(rest, args.nproc)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv)
    except dsl.DnetError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except (WeightsError, TensorFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except (RuntimeError, MemoryError) as e:
        message = _out_of_memory(e)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1


def _out_of_memory(e: BaseException) -> str | None:
    """A failed allocation (host or device) told in one line with the remedies, or None."""
    text = str(e)
    if not isinstance(e, MemoryError) and "can't allocate memory" not in text and "out of memory" not in text:
        return None
    size = re.search(r"allocate (\d+) bytes", text)
    asked = f" ({int(size.group(1)) / 2**30:,.1f} GiB at once)" if size else ""
    device = "GPU" if "CUDA" in text else "host"
    return (
        f"error: out of {device} memory{asked}: the network's input or the batch is too large for this machine\n"
        "  = help: a smaller input (`--set size=...`), a smaller `--batch-size`, `--accumulate N` or "
        "`--memory shared` needs less"
    )


if __name__ == "__main__":
    sys.exit(main())
