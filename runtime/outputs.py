"""What dnetc writes of a compiled network: the summary tables, a diagram, the standalone source,
an ONNX or safetensors file. The writers return an exit code (0; 1 for a failure, 2 for a diagram path of no known
format), told on stderr; torch and graphviz are imported only by the outputs that need them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx

EMIT_FORMATS = ("python",)


def emit_source(g: nx.DiGraph, path: str | None, memory: str, overrides: list[str]) -> int:
    """`--emit python [FILE]`: the standalone source, memory-efficient by default when the spec or
    `--memory` asks for a memory-efficient lowering (the source's checkpointing stands in for them)."""
    from dnetc.compiler.lowerings import LOWERINGS
    from dnetc.compiler.source import python_source

    efficient = memory != "auto" and LOWERINGS[memory].memory_efficient
    text = python_source(g, memory_efficient=efficient, overrides=overrides)
    if path is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"error: cannot write `{path}`: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def export(
    g: nx.DiGraph,
    fmt: str,
    path: str,
    weights: str | None,
    reset_classifier: bool,
    converted: Callable[[], Any],
    overrides: list[str],
) -> int:
    """`--export FORMAT FILE`: the naive lowering with the weights given, written as EXPORTS[FORMAT] says."""
    from dnetc.compiler.emit import emit
    from dnetc.runtime.weights import WeightsError, classifier_modules, load_into

    refusal = _condensed_refusal(g, weights) if fmt == "condensed" else None
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    model = emit(g, "naive")
    if weights:
        reset = classifier_modules(g) if reset_classifier else ()
        try:
            load_into(model, weights, reset, g.graph["name"])
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return EXPORTS[fmt](g, model, path, converted, overrides)


def _onnx(g: nx.DiGraph, model: Any, path: str, converted: Callable[[], Any], overrides: list[str]) -> int:
    """The network in eval mode, any batch size."""
    from dnetc.compiler.export import ExportError, onnx

    try:
        onnx(model, tuple(g.nodes["input"]["shape"]), path)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def _safetensors(g: nx.DiGraph, model: Any, path: str, converted: Callable[[], Any], overrides: list[str]) -> int:
    """The weights, and in the metadata the spec's texts, overrides, parameter count and the weights' SHA-256."""
    from dnetc.runtime import tensorfile

    try:
        tensorfile.write(model, g.graph["network"], overrides, path, g.graph["params"])
    except OSError as e:
        print(f"error: cannot write `{path}`: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {path}: `dnetc {path} --summary` rebuilds the network from it")
    return 0


def _condensed_refusal(g: nx.DiGraph, weights: str | None) -> str | None:
    if "converted" not in g.graph["network"].parameters:
        return (
            "`--export condensed` converts a family written in both forms (a `converted` parameter, as "
            f"archs/condensenet.dnet has); {g.graph['name']} has none"
        )
    if not weights:
        return "`--export condensed` converts trained weights: give them with --weights FILE"
    return None


def _condensed(g: nx.DiGraph, model: Any, path: str, converted: Callable[[], Any], overrides: list[str]) -> int:
    """A trained CondenseNet's weights in its converted form (`converted()` builds that network)."""
    from dnetc.compiler.condense import ConversionError, convert
    from dnetc.compiler.emit import emit
    from dnetc.runtime import checkpoint

    target = emit(converted(), "naive")
    try:
        convert(model, target)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    checkpoint.save({"model": target.state_dict()}, path)
    print(f"wrote {path}: the converted weights; use them with --set converted=true --weights {path}")
    return 0


# `--export FORMAT FILE`: each format's writer, given the graph, the model with its weights, the path,
# the family's other form (CondenseNet's converted network) and the overrides
EXPORTS: dict[str, Callable[..., int]] = {"onnx": _onnx, "safetensors": _safetensors, "condensed": _condensed}
EXPORT_FORMATS = tuple(EXPORTS)


def summary(
    g: nx.DiGraph,
    depth: int,
    memory: str,
    batch: int,
    dtype: str,
    quiet_table: bool = False,
    weights: str | None = None,
) -> None:
    """torchinfo's table of the emitted module, the graph's per-block table (checked against each
    other), and the estimated training memory of each lowering; with `weights`, loaded first."""
    import torchinfo

    from dnetc.compiler import report
    from dnetc.compiler.emit import emit
    from dnetc.compiler.lowerings import LOWERINGS
    from dnetc.compiler.memory import choose_lowering
    from dnetc.runtime.weights import load_into

    lowering = choose_lowering(g, memory, batch)
    model = emit(g, lowering)
    loaded = load_into(model, weights, name=g.graph["name"]) if weights else 0
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
    if g.graph["exits"]:
        print(file=out)
        print(
            f"{len(g.graph['exits']) + 1} classifiers, each scoring the input (the model returns them stacked):",
            file=out,
        )
        print(report.exit_table(g), file=out)
    print(file=out)
    print(report.memory_table(g, batch, dtype, lowering), file=out)
    fallbacks: dict[tuple[str, str | None], list[str]] = {}
    for name, module in model.named_modules():
        # a lowering's own block says why it falls back; a block the emitter made naive instead says it too
        reason = module.fallback() if hasattr(module, "fallback") else getattr(module, "fallback_reason", None)
        if reason:
            instead = getattr(module, "runs_as", None) or LOWERINGS[lowering].falls_back
            fallbacks.setdefault((reason, instead), []).append(name.rsplit(".", 1)[-1])
    for (reason, instead), names in fallbacks.items():
        print(f"\nThe {lowering} lowering runs {', '.join(names)} as {instead}: {reason}.", file=out)
    if weights:
        print(f"\nWeights: {loaded} tensors from {weights}, every one matched.", file=out)


def draw(g: nx.DiGraph, path: str, detail: str) -> int:
    """`--viz FILE`: the diagram in the format FILE's suffix names; without Graphviz's `dot`, its
    source, so that nothing is lost, and how to install it."""
    import graphviz

    from dnetc.compiler import viz

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
