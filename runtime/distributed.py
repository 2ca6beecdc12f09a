"""Data-parallel training: one process per device, started by torchrun (any number of machines)
or by `dnetc --nproc N` (one machine).

The batch size is the global one, as in the paper: every rank draws the same global batch from the
same seeded order and augmentation and trains on its own contiguous share of it, so that N
processes see the data one process would. Decisions that must agree (stop, save, a non-finite loss)
are taken together at the first step of each window of runtime.step.WINDOW steps, by one small
all-reduce.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: a world of one without torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and the progress line."""
        return self.rank == 0

    def device(self, device: str) -> torch.device:
        """`cuda` means this rank's own GPU."""
        d = torch.device(device)
        if d.type == "cuda" and d.index is None and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return d

    def share(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of n (the first ranks take one more)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum over the ranks (float64, so that counts stay exact)."""
        if self.size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def sum_tensor(self, t: torch.Tensor) -> list[float]:
        """A device tensor summed over the ranks and read: one read of the device however long it is."""
        if self.size > 1:
            t = t.clone()
            dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def from_environment(device: str) -> World:
    """Join the process group that torchrun's environment describes (nccl on CUDA, gloo on the CPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return world


def leave(together: bool = True) -> None:
    """Leave the process group; `together`: wait for every rank first (rank 0 may still be writing)."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def launch(argv: Sequence[str], nproc: int) -> int:
    """`dnetc ... --nproc N`: N workers on this machine, each `python -m runtime ...` with the
    environment torchrun would give it. SIGINT and SIGTERM pass on to the workers, which finish the
    step, save and exit together; if one fails, the others (blocked in a collective) are stopped."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    procs = []
    for rank in range(nproc):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(nproc),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(nproc),
        }
        env.setdefault("OMP_NUM_THREADS", threads)
        procs.append(subprocess.Popen([sys.executable, "-m", "runtime", *argv], env=env))

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed_at = None
        while any(p.poll() is None for p in procs):
            codes = [p.returncode for p in procs if p.returncode is not None]
            if failed_at is None and any(c not in (0, 1) for c in codes):
                failed_at = time.monotonic()  # a crash, not a saved stop: the others cannot go on
            if failed_at is not None and time.monotonic() - failed_at > 10:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
        return max(abs(p.returncode) for p in procs)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
