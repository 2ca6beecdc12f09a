"""Files, imports and the zoo: find a spec, parse it with everything it uses, pick its network."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from . import ast, spec
from .errors import DnetError, Span, did_you_mean
from .evaluate import CHOICES, Scope, evaluate
from .instantiate import Definition, Override, instantiate
from .syntax import parse_expression, parse_module

MAX_IMPORT_DEPTH = 32
SUFFIX = ".dnet"


def zoo_dir() -> Path:
    """The folder of the model zoo, installed with the package."""
    return Path(str(resources.files("dnetc.archs")))


def zoo_names() -> list[str]:
    return sorted(p.stem for p in zoo_dir().glob(f"*{SUFFIX}"))


def _is_file(p: Path, or_folder: bool = False) -> bool:
    """Whether `p` is a file (or anything, with `or_folder`), a name too long or otherwise unusable
    counting as nothing there."""
    try:
        return p.exists() if or_folder else p.is_file()
    except (OSError, ValueError):
        return False


def resolve(path_or_name: str | Path) -> Path:
    """A spec file's path from a path or a zoo name."""
    p = Path(path_or_name)
    if _is_file(p):
        return p
    name = str(path_or_name)
    zoo = zoo_dir() / (name if name.endswith(SUFFIX) else name + SUFFIX)
    if _is_file(zoo):
        return zoo
    if _is_file(p, or_folder=True):
        raise DnetError(f"`{name}` is not a file")
    raise DnetError(
        f"no spec file or zoo model named `{name}`",
        help=did_you_mean(p.stem, zoo_names()) or "`dnetc zoo` lists the zoo's models",
    )


def load(path_or_name: str | Path, overrides: Mapping[str, Any] | None = None, /, **kwargs: Any) -> spec.Network:
    """Load the network of a spec file or zoo model, with parameters overridden by keyword.

    `dsl.load("densenet_bc", depth=250, growth=24)`. Overrides may also be given as a mapping of
    name -> `Override` (what `parse_overrides` makes of `--set NAME=VALUE`).
    """
    path = resolve(path_or_name)
    text = _read(path, None)
    return _load_text(text, _display(path.resolve()), path, _overrides(overrides, kwargs))


def parse(text: str, /, filename: str = "<string>", **overrides: Any) -> spec.Network:
    """Parse spec text (imports resolved next to `filename`, then in the zoo) into its network."""
    path = Path(filename) if filename != "<string>" else None
    return _load_text(text, filename, path, _overrides(None, overrides))


def load_bundle(
    files: Mapping[str, str], main: str, overrides: Mapping[str, Any] | None = None, /, **kwargs: Any
) -> spec.Network:
    """The network of a bundle of spec texts (what `Network.bundle()` gives): `main` and the files it
    uses, each under its path from the main file's folder; nothing is read from disk."""
    if main not in files:
        raise DnetError(f"the bundle has no spec `{main}`")
    return _load_text(files[main], main, None, _overrides(overrides, kwargs), files=dict(files))


def parse_overrides(assignments: list[str]) -> dict[str, Override]:
    """`["depth=250", "growth=24"]` -> overrides, each located in the command line it came from."""
    out: dict[str, Override] = {}
    for item in assignments:
        source = f"--set {item}"
        name, eq, value = item.partition("=")
        name = name.strip()
        span = Span("command line", 1, 7, 1, 7 + max(1, len(name)))
        if not eq or not name.isidentifier():
            raise DnetError(
                f"`--set {item}` is not of the form NAME=VALUE",
                span,
                source=source,
                help="for example `--set depth=250`",
            )
        try:
            expr = parse_expression(value, "command line")
            result = evaluate(expr, Scope())
        except DnetError as e:
            col = 7 + len(item) - len(value) + ((e.span.col - 1) if e.span else 0)
            raise DnetError(
                f"bad value for `{name}`: {e.message}",
                Span("command line", 1, col, 1, col + 1),
                source=source,
                label=e.label,
                help=e.help or "values are numbers, sizes like 3x3, lists like [6, 12, 24, 16], or none",
            ) from None
        out[name] = Override(result, span, source)
    return out


def _overrides(given: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Override]:
    out: dict[str, Override] = {}
    for name, value in {**(given or {}), **kwargs}.items():
        if isinstance(value, Override):
            out[name] = value
            continue
        source = f"{name}={value!r}"
        if isinstance(value, tuple):
            value = tuple(value)
        elif isinstance(value, str) and value not in CHOICES and not re.match(r"^group\([1-9][0-9]*\)$", value):
            raise DnetError(
                f"override `{name}` = {value!r} is not a choice the language knows",
                Span("overrides", 1, len(name) + 2),
                source=source,
                help=did_you_mean(value, CHOICES) or "choices: " + ", ".join(CHOICES) + " and group(G)",
            )
        elif not isinstance(value, int | float | bool | list | str | type(None)):
            raise DnetError(
                f"override `{name}` must be a number, a list, a size, a choice or None, not {type(value).__name__}",
                Span("overrides", 1, len(name) + 2),
                source=source,
            )
        out[name] = Override(value, Span("overrides", 1, 1, 1, len(name) + 1), source)
    return out


def _read(path: Path, at: tuple[Span, str] | None) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e, at) from None
    except OSError as e:
        raise DnetError(f"cannot read `{path}`: {e.strerror or e}", *_where(at)) from None


def _not_utf8(path: Path, e: UnicodeDecodeError, at: tuple[Span, str] | None) -> DnetError:
    """The first byte that is not UTF-8, at its line and column in the file, the line shown as far
    as it decodes."""
    data = e.object if isinstance(e.object, bytes) else path.read_bytes()
    before = data[: e.start].decode("utf-8")
    line = before.count("\n") + 1
    col = len(before) - (before.rfind("\n") + 1) + 1
    text = data.decode("utf-8", errors="replace")
    notes = [f"imported from {at[0]}"] if at else []
    return DnetError(
        f"the file is not UTF-8 text: byte {e.start} (0x{data[e.start]:02x}) cannot be decoded",
        Span(_display(path), line, col, line, col + 1),
        source=text,
        label="not UTF-8",
        help="save the spec as UTF-8; names and comments may use any Unicode character",
        notes=notes,
    )


def _display(path: Path) -> str:
    """A path as diagnostics show it: relative to the working directory when under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _where(at: tuple[Span, str] | None) -> tuple:
    return (at[0],) if at else ()


class _Loader:
    """Parses a file and, depth first, every file it uses, refusing cycles."""

    def __init__(self, files: dict[str, str] | None = None) -> None:
        self.modules: dict[Path | str, dict[str, Definition]] = {}
        self.stack: list[Path | str] = []
        self.sources: dict[str, str] = {}
        self.files = files  # a bundle's texts, read instead of the disk
        self.bundle: dict[str, str] = {}  # every text loaded, under its path from the main file's folder

    def module(
        self, text: str, file: str, path: Path | None, key: str | None = None
    ) -> tuple[ast.Module, dict[str, Definition]]:
        key = key or (path.name if path is not None else file)
        self.sources[file] = text
        self.bundle[key] = text
        module = parse_module(text, file)
        scope: dict[str, Definition] = {}
        for use in module.uses:
            target_key = posixpath.normpath(posixpath.join(posixpath.dirname(key), use.path))
            if self.files is not None:
                if target_key not in self.files:
                    raise DnetError(f"cannot find `{use.path}` among the bundled specs", use.path_span)
                target: Path | str = target_key
            else:
                target = self.find(use, path)
            if target in self.stack:
                cycle = " -> ".join(Path(p).name for p in [*self.stack[self.stack.index(target) :], target])
                raise DnetError(f"import cycle: {cycle}", use.path_span, label="imported again here")
            if len(self.stack) >= MAX_IMPORT_DEPTH:
                raise DnetError(f"imports nest deeper than {MAX_IMPORT_DEPTH} files", use.path_span)
            if target not in self.modules:
                self.stack.append(target)
                if isinstance(target, str):
                    _, names = self.module(self.files[target], target, None, target_key)
                else:
                    _, names = self.module(_read(target, (use.path_span, text)), _display(target), target, target_key)
                self.stack.pop()
                self.modules[target] = names
            names = self.modules[target]
            for name, span in use.names:
                if name not in names:
                    raise DnetError(
                        f"`{use.path}` defines no network or layer `{name}`",
                        span,
                        help=did_you_mean(name, names)
                        or "it defines " + (", ".join(f"`{n}`" for n in names) or "nothing"),
                    )
                scope[name] = names[name]
        for node in [*module.layers, *module.networks]:
            if node.name in scope:
                what = "layer" if isinstance(node, ast.LayerDef) else "network"
                raise DnetError(f"{what} `{node.name}` is defined twice in this file", node.name_span)
            scope[node.name] = Definition(node, module, scope)
        return module, scope

    def find(self, use: ast.Use, importer: Path | None) -> Path:
        rel = Path(use.path)
        candidates = ([importer.parent / rel] if importer else [Path.cwd() / rel]) + [zoo_dir() / rel]
        for c in candidates:
            if _is_file(c):
                return c.resolve()
        raise DnetError(
            f"cannot find `{use.path}`",
            use.path_span,
            label="imported here",
            notes=["looked in " + " and ".join(f"`{c.parent}`" for c in candidates)],
            help=did_you_mean(
                use.path, {str(f.name) for c in candidates if c.parent.is_dir() for f in c.parent.glob(f"*{SUFFIX}")}
            ),
        )


def _load_text(
    text: str, file: str, path: Path | None, overrides: dict[str, Override], files: dict[str, str] | None = None
) -> spec.Network:
    loader = _Loader(files)
    if path is not None:
        loader.stack.append(path.resolve())
    elif files is not None:
        loader.stack.append(file)
    try:
        module, scope = loader.module(text, file, path)
        own = [n for n in module.networks]
        if not own:
            raise DnetError(
                "this file defines no network", Span(file, 1, 1), help="define one: network NAME(...) { ... }"
            )
        main = _main_network(own, file)
        network = instantiate(scope[main.name], overrides)
        network._sources, network._bundle = loader.sources, (loader.bundle, next(iter(loader.bundle)))
        return network
    except DnetError as e:
        if e.source is None and e.span is not None and e.span.file in loader.sources:
            e.source = loader.sources[e.span.file]
        raise
    except RecursionError:
        raise DnetError(
            "the spec nests too deeply (expressions, aliases or imports)", Span(file, 1, 1), source=text
        ) from None


def _main_network(networks: list[ast.NetworkDef | ast.NetworkAlias], file: str) -> ast.NetworkDef | ast.NetworkAlias:
    """The network a file stands for: its only one, or the one named after the file."""
    if len(networks) == 1:
        return networks[0]
    stem = Path(file).stem
    for n in networks:
        if n.name == stem:
            return n
    return networks[-1]
