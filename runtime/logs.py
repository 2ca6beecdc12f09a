"""What a run leaves to read: metrics.csv and metrics.jsonl, curves.png (loss and error against
epoch), and TensorBoard events when tensorboard is installed. Rank 0 writes them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class Logs:
    def __init__(self, out: Path) -> None:
        self.out = out
        self._board: Any = None
        self._board_tried = False

    def write(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(record))
            if new:
                writer.writeheader()
            writer.writerow(record)
        board = self.board()
        if board is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, int | float):
                    board.add_scalar(key, value, record["epoch"])
            board.flush()
        curves(history, self.out / "curves.png")

    def board(self) -> Any:
        """A TensorBoard writer when tensorboard is installed, else None."""
        if not self._board_tried:
            self._board_tried = True
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return None
            self._board = SummaryWriter(str(self.out / "tensorboard"))
        return self._board

    def close(self) -> None:
        if self._board is not None:
            self._board.close()


def curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training and test loss and error (%) against epoch, side by side, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (loss, error) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((loss, "loss", "loss (log scale)"), (error, "error", "error (%, log scale)")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], label="train", marker=".")
        ax.plot(epochs, [r[f"test_{key}"] for r in history], label="test", marker=".")
        # both fall by orders of magnitude after the first epochs: on a linear axis they are flat from epoch 2
        if all(r[f"{split}_{key}"] > 0 for r in history for split in ("train", "test")):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    if history:
        error.set_title(f"final test error {history[-1]['test_error']:.2f}%")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)
