"""What runs: the `dnetc` command line, the datasets and the trainer.

This module stays free of torch, so that `dnetc SPEC` validates without importing it.
"""

from __future__ import annotations

from typing import Any


def version() -> str:
    """dnetc's installed version, recorded in runs and checkpoints."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("dnetc")
    except PackageNotFoundError:
        return "unknown"


def __getattr__(name: str) -> Any:
    """`runtime.fit`: the trainer from Python, imported (with torch) only when asked for."""
    if name == "fit":
        from .launch import fit

        return fit
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
