"""Where a backbone's feature maps are read: the last part of `features` at each resolution.

timm's `feature_info` and `features_only` for every network of the language: a tap is the output of
the part after which the spatial size changes (and of the last part), with its channels and its
reduction from the input. A U-shaped network (FC-DenseNet) gets a tap on each side of each size; a
grid of scales (MSDNet) is not tapped inside (its parts return lists of maps), only before and after.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from .graph import ROOT, part_of


class FeatureInfo(list):
    """timm's feature_info: one dict a tap (`num_chs`, `reduction`, `module`, `index`), and its columns."""

    def channels(self) -> list[int]:
        return [t["num_chs"] for t in self]

    def reduction(self) -> list[int]:
        return [t["reduction"] for t in self]

    def module_name(self) -> list[str]:
        return [t["module"] for t in self]


def feature_taps(g: nx.DiGraph) -> FeatureInfo:
    """Every tap of the network's `features`, in order."""
    size = g.nodes["input"]["shape"][1:]
    outputs: dict[str, str] = {}  # part -> its output node
    for n in g.nodes:
        if n.startswith(ROOT + "."):
            shape = g.nodes[n].get("shape")
            single = shape is not None and isinstance(shape[0], int) and len(shape) == len(size) + 1
            if single and g.nodes[n]["op"] != "coarsest":  # a grid's last scale is an entry of a list, not a map
                outputs[part_of(g, n)] = n
    parts = list(outputs)
    taps: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        here = g.nodes[outputs[part]]["shape"]
        following = g.nodes[outputs[parts[i + 1]]]["shape"] if i + 1 < len(parts) else None
        if following is None or following[1:] != here[1:]:
            taps.append(
                {
                    "num_chs": here[0],
                    "reduction": max(1, size[0] // here[1]) if here[1] <= size[0] else 1,
                    "module": f"{ROOT}.{part}",
                    "index": len(taps),
                }
            )
    return FeatureInfo(taps)
