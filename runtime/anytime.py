"""Anytime and budgeted prediction with a multi-exit network (Huang et al. 2018, MSDNet section 5).

Anytime: every exit's test error beside the multiply-adds spent when it answers (the exits before it
evaluated too). Budgeted: a sample leaves at the first exit whose confidence (its largest softmax
probability) reaches that exit's threshold. The thresholds are the authors': for a share q, exit k
takes the fraction of samples proportional to q^k that are most confident there, found on the
validation split where the dataset has one (else on the test split, which flatters the result).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dnetc.compiler.report import columns

if TYPE_CHECKING:
    from .train import Trainer

# the authors' shares: q = p / 20 for p = 1 .. 39 (adaptive_inference.py); every fourth, and q = 1
SHARES = (0.05, 0.25, 0.45, 0.65, 0.85, 1.0, 1.05, 1.25, 1.45, 1.65, 1.85)


def confidences(trainer: Trainer, split: str) -> tuple[Tensor, Tensor]:
    """Each sample's confidence at each exit and whether that exit is right: two (N, exits) tensors."""
    conf, right = [], []
    for out, y in trainer.outputs(split):  # (exits, N, classes)
        top, label = out.softmax(-1).max(-1)
        conf.append(top.T.cpu())
        right.append((label == y).T.cpu())
    return torch.cat(conf), torch.cat(right)


def thresholds(conf: Tensor, share: float) -> Tensor:
    """The confidence each exit needs: exit k (not the last) takes the floor(n·p_k) most confident of the
    samples still there, p_k proportional to share^(k+1); the last exit takes the rest."""
    n, exits = conf.shape
    p = torch.tensor([share ** (k + 1) for k in range(exits)], dtype=torch.float64)
    p /= p.sum()
    t = torch.full((exits,), math.inf, dtype=conf.dtype)
    left = torch.ones(n, dtype=torch.bool)
    for k in range(exits - 1):
        take = math.floor(n * float(p[k]))
        there = conf[left, k].sort(descending=True).values
        if 0 < take <= len(there):
            t[k] = there[take - 1]
        left &= conf[:, k] < t[k]
    t[-1] = -math.inf
    return t


def budgeted(conf: Tensor, right: Tensor, t: Tensor, costs: list[int]) -> dict[str, Any]:
    """Each sample at its first exit whose confidence reaches the threshold: error, mean cost, shares."""
    leave = (conf >= t).int().argmax(1)  # the first exit that answers (the last always does)
    taken = torch.bincount(leave, minlength=conf.shape[1]).double() / len(leave)
    correct = right.gather(1, leave[:, None]).double().mean()
    return {
        "mult_adds": float((taken * torch.tensor(costs, dtype=torch.float64)).sum()),
        "error": 100.0 * (1 - float(correct)),
        "taken": [float(x) for x in taken],
    }


def evaluate(trainer: Trainer, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The anytime and budgeted tables of a multi-exit network; `rows`: compiler.report.exits."""
    costs = [r["mult_adds_anytime"] for r in rows]
    conf, right = confidences(trainer, "test")
    split = "val" if getattr(trainer.data, "val", None) is not None else "test"
    chosen = conf if split == "test" else confidences(trainer, "val")[0]
    errors = (100.0 * (1 - right.double().mean(0))).tolist()
    anytime = [{**r, "error": e} for r, e in zip(rows, errors, strict=True)]
    budgets = [
        {"share": q, **budgeted(conf, right, t, costs), "thresholds": [float(x) for x in t]}
        for q in SHARES
        for t in [thresholds(chosen, q)]
    ]
    return {"anytime": anytime, "budgeted": budgets, "thresholds_from": split, "samples": len(conf)}


def tables(result: dict[str, Any]) -> str:
    """The two tables as the terminal shows them."""
    lines = ["anytime prediction: each exit's answer, the exits before it evaluated too"]
    head = ("exit", "MACs", "params", "test error")
    body = [
        (r["name"], f"{r['mult_adds_anytime']:,}", f"{r['params']:,}", f"{r['error']:.2f}%") for r in result["anytime"]
    ]
    lines.append(columns([head, *body], left={0, 3}))
    lines.append("")
    where = (
        "the validation split"
        if result["thresholds_from"] == "val"
        else "the test split itself (the dataset has no validation split, so these errors flatter)"
    )
    lines.append(f"budgeted prediction: a sample leaves at the first exit confident enough, thresholds from {where}")
    head = ("share q", "mean MACs", "test error", "leaving at each exit")
    body = [
        (
            f"{b['share']:.2f}",
            f"{b['mult_adds']:,.0f}",
            f"{b['error']:.2f}%",
            " ".join(f"{100 * x:.0f}" for x in b["taken"]) + " %",
        )
        for b in result["budgeted"]
    ]
    lines.append(columns([head, *body], left={0, 3}))
    return "\n".join(lines)
