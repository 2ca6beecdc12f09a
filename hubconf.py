"""torch.hub entry points: every network of dnetc's zoo, with its parameters as keywords.

    model = torch.hub.load("path/to/dnetc", "densenet_bc", depth=250, growth=24, source="local")

`memory` picks the lowering of the dense blocks (compiler/lowerings.py). The zoo has no pretrained
weights: load a checkpoint or safetensors file with `load_state_dict`.
"""

from __future__ import annotations

import importlib.util  # modules, not entry points: torch.hub.list lists the public callables
import pathlib
import sys
import types
import typing


def _checkout() -> None:
    """Make this checkout importable as `dnetc` when dnetc is not installed (torch.hub on a clone, the
    benchmarks on a machine without the package): its folders are dnetc's packages."""
    try:
        import dnetc.compiler  # noqa: F401 - installed
    except ImportError:
        root = pathlib.Path(__file__).resolve().parent
        package = types.ModuleType("dnetc")
        package.__path__ = []
        sys.modules["dnetc"] = package
        for name in ("archs", "dsl", "compiler", "runtime"):
            spec = importlib.util.spec_from_file_location(
                f"dnetc.{name}", root / name / "__init__.py", submodule_search_locations=[str(root / name)]
            )
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            setattr(package, name, module)
            spec.loader.exec_module(module)


_checkout()

from dnetc import compiler, dsl  # noqa: E402

dependencies = ["torch", "lark", "pydantic", "networkx"]


def _entry(name: str) -> typing.Any:
    def entry(pretrained: bool = False, memory: str | None = None, **overrides: typing.Any) -> typing.Any:
        if pretrained:
            raise ValueError(f"dnetc's zoo has no pretrained weights for {name}: load a file with load_state_dict")
        return compiler.compile(name, memory=memory, **overrides)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{name} from dnetc's zoo (archs/{name}.dnet); keywords override the spec's parameters."
    return entry


for _spec in sorted(dsl.zoo_dir().glob("*.dnet")):
    globals()[_spec.stem] = _entry(_spec.stem)
