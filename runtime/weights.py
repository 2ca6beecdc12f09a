"""Weights from elsewhere: dnetc checkpoints, plain state_dicts, safetensors files (dnetc's, timm's,
anyone's) and torchvision's DenseNet files.

Every file is read with weights_only=True. Keys are brought to the compiled module's names:
the `module.` of DDP and `_orig_mod.` of torch.compile are dropped, and torchvision's old key
style (`denselayer1.norm.1.weight`, in its first released files) becomes `denselayer1.norm1.weight`.
A file that does not fit is refused whole, with a table of what differs: a model is never left
half-loaded.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when weights are read: `dnetc SPEC` validates without it
    from torch import Tensor, nn

_OLD_STYLE = re.compile(
    r"(denselayer\d+\.(?:norm|relu|conv))\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
# dnetc before 0.2 named a stem's repeated parts conv0, conv0_2, conv0_3; now conv0, conv1, conv2 (timm's)
_OLD_STEM = re.compile(r"^(features\.[a-z_]+?)0_(\d+)\.")
_PREFIXES = ("module.", "_orig_mod.")
MAX_ROWS = 24


class WeightsError(Exception):
    """A weights file that cannot be read, or does not fit the network."""


_LAYOUTS = tomllib.loads(resources.files(__package__).joinpath("layouts.toml").read_text(encoding="utf-8"))
TENSORS: list[str] = _LAYOUTS["torch"]["order"]  # a module's own tensors, as torch registers them


@dataclass(frozen=True)
class Layout:
    """The order in which another tool registers a network's tensors (an entry of layouts.toml)."""

    key: str
    name: str  # timm's VoVNet
    tool: str  # timm, or where the code is
    models: tuple[str, ...]  # the tool's models that it holds for
    rank: Mapping[str, int]  # a part's name (or `parent.part`, or a tensor's) -> its place among siblings

    @property
    def parts(self) -> set[str]:
        """The names of module parts it ranks: a file sharing more of them is more likely the tool's."""
        return {name.rpartition(".")[2] for name in self.rank} - set(TENSORS)

    def sort(self, keys: Iterable[str]) -> list[str]:
        """The names in the order the tool's state_dict gives them."""

        def place(key: str) -> tuple:
            parts = key.split(".")
            return tuple(self._place(parts[i - 1] if i else "", part) for i, part in enumerate(parts))

        return sorted(keys, key=place)

    def _place(self, parent: str, part: str) -> tuple:
        """A part's place among its siblings: ranked as `parent.part`, or as `part`, or by its name."""
        for name in (f"{parent}.{part}", part):
            if name in self.rank:
                return (0, self.rank[name])
        return (1, _natural(part))


def _natural(part: str) -> tuple:
    """`conv5_12` as ("conv", 5, "_", 12): its numbers compared as numbers."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.findall(r"\d+|\D+", part))


# Other tools' layouts, for files that sort their names (safetensors): runtime/layouts.toml
LAYOUTS: dict[str, Layout] = {
    key: Layout(key, e["name"], e["tool"], tuple(e["models"]), {n: i for i, n in enumerate([*e["order"], *TENSORS])})
    for key, e in _LAYOUTS.items()
    if key != "torch"
}


def read(path: str | Path) -> dict[str, Tensor]:
    """The state_dict in a file: a dnetc checkpoint (checksum verified), a plain state_dict, or a
    dict holding one under `state_dict` or `model`; keys in the compiled module's style."""
    import torch

    from . import checkpoint, tensorfile

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    try:
        state = tensorfile.read(path)[0] if tensorfile.is_tensorfile(path) else checkpoint.load_weights(path)
    except (checkpoint.CheckpointError, tensorfile.TensorFileError) as e:
        raise WeightsError(str(e)) from None
    except Exception as e:
        raise WeightsError(_unreadable(path, e)) from None
    if isinstance(state, dict):  # a dnetc checkpoint keeps the model's under `model`
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state_dict (a mapping of names to tensors)")
    return translate(state)


def _unreadable(path: Path, e: Exception) -> str:
    """torch's refusal in one line: code in the pickle, or not a torch file at all."""
    code = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if code:
        return f"{path} cannot be loaded safely: its pickle would call {code.group(1)} (refused, nothing was run)"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{path} is not a torch weights file (truncated, or another format): {first[:200]}"


def translate(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys as the compiled module names them."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        key = _OLD_STEM.sub(lambda m: f"{m.group(1)}{int(m.group(2)) - 1}.", key)
        out[_OLD_STYLE.sub(r"\1\2.\3", key)] = value
    return out


def sha256(path: str | Path) -> str:
    """The file's SHA-256, recorded in a run that starts from it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def classifier_modules(g: Any) -> list[str]:
    """The modules that `--reset-classifier` starts afresh: the graph's linear layers."""
    return [g.nodes[n]["module"] for n in g if g.nodes[n]["op"] == "linear"]


def _shape(t: Tensor | None) -> str:
    if t is None:
        return "-"
    return "x".join(map(str, t.shape)) or "scalar"


def load_into(
    model: nn.Module,
    source: str | Path | Mapping[str, Tensor],
    reset: Iterable[str] = (),
    name: str = "the network",
) -> int:
    """Load weights into `model`, every key matched, except the modules in `reset`, which keep the
    model's own (initial) values. Returns the number of tensors loaded; raises WeightsError with a
    table of missing, unexpected and differently shaped keys when the file does not fit."""
    where = str(source) if isinstance(source, str | Path) else "the state_dict"
    state = read(source) if isinstance(source, str | Path) else translate(source)
    reset = tuple(reset)

    def kept(key: str) -> bool:
        return not any(key == r or key.startswith(r + ".") for r in reset)

    everything = model.state_dict()
    if set(state) != set(everything) and (found := renamed(everything, state, reset)) is not None:
        state, how = found
        print(
            f"note: {where} names its tensors as another tool does; loaded by position in {how}, all "
            f"{len(state):,} shapes matching",
            file=sys.stderr,
        )
    own = {k: v for k, v in everything.items() if kept(k)}
    given = {k: v for k, v in state.items() if kept(k)}
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    shapes = [k for k in own if k in given and own[k].shape != given[k].shape]
    if missing or unexpected or shapes:
        raise WeightsError(_mismatch(where, name, own, given, missing, unexpected, shapes, reset))
    model.load_state_dict(given, strict=False)
    return len(given)


def renamed(
    own: Mapping[str, Tensor], given: Mapping[str, Tensor], reset: Iterable[str] = ()
) -> tuple[dict[str, Tensor], str] | None:
    """Another tool's state_dict of the same network under its own names, under ours, and the order
    that fitted: the file's own (a torch file keeps its state_dict's), else a known tool's (a
    safetensors file sorts its names; runtime/layouts.toml). None if no order fits."""
    reset = tuple(reset)
    if (state := by_position(own, given, reset)) is not None:
        return state, "the file's own order"
    parts = {part for key in given for part in key.split(".")}
    for layout in sorted(LAYOUTS.values(), key=lambda layout: -len(parts & layout.parts)):
        ordered = {key: given[key] for key in layout.sort(given)}
        if (state := by_position(own, ordered, reset)) is not None:
            return state, f"the order of {layout.name}"
    return None


def by_position(
    own: Mapping[str, Tensor], given: Mapping[str, Tensor], reset: Iterable[str] = ()
) -> dict[str, Tensor] | None:
    """The tensors of `given` under the names of `own`, taken in order, when there are as many and
    every shape matches (a 1x1 conv's weight standing for a linear layer's, as timm's DPN
    classifier); else None. The `reset` modules' shapes may differ (another class count)."""
    if len(own) != len(given):
        return None
    reset = tuple(reset)
    out: dict[str, Tensor] = {}
    for (key, mine), theirs in zip(own.items(), given.values(), strict=True):
        if any(key == r or key.startswith(r + ".") for r in reset):
            out[key] = mine
        elif theirs.shape == mine.shape:
            out[key] = theirs
        elif theirs.numel() == mine.numel() and tuple(theirs.shape[: mine.dim()]) == tuple(mine.shape):
            out[key] = theirs.reshape(mine.shape)  # (out, in, 1, 1) for (out, in)
        else:
            return None
    return out


def _mismatch(
    where: str,
    name: str,
    own: dict[str, Tensor],
    given: dict[str, Tensor],
    missing: list[str],
    unexpected: list[str],
    shapes: list[str],
    reset: tuple[str, ...],
) -> str:
    """One row a module (its tensors together), in the network's order, then what the file has besides."""
    counts = [
        f"{len(x)} {what}"
        for x, what in ((shapes, "of another shape"), (missing, "missing from the file"), (unexpected, "not in it"))
        if x
    ]
    modules: dict[str, list[str]] = {}
    wrong = set(shapes) | set(missing)
    for key in [*(k for k in own if k in wrong), *unexpected]:
        modules.setdefault(key.rpartition(".")[0] or key, []).append(key)
    rows = []
    for module, keys in modules.items():
        key = next((k for k in keys if k.endswith(".weight")), keys[0])
        rows.append((module, str(len(keys)), _shape(given.get(key)), _shape(own.get(key))))
    head = ("module", "tensors", "in the file", f"in {name}")
    shown = [head, *rows[:MAX_ROWS]]
    widths = [max(len(r[i]) for r in shown) for i in range(len(head))]
    lines = [f"{where} does not fit {name}: " + ", ".join(counts) + " (shapes of each module's weight)"]
    for row in shown:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if len(rows) > MAX_ROWS:
        lines.append(f"  ... and {len(rows) - MAX_ROWS:,} more modules")
    if {m.split(".")[0] for m in modules} == {"classifier"} and not reset:
        lines.append("  = help: --reset-classifier starts the classifier afresh, for another class count")
    elif missing or shapes:
        lines.append("  = help: check the spec and its --set values: the file holds another network")
    return "\n".join(lines)
