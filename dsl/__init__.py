"""The .dnet language: parse and validate a spec into a `Network` (no torch needed here)."""

from .errors import DnetError, Span
from .format import format_source
from .instantiate import Override
from .loader import load, load_bundle, parse, parse_overrides, resolve, zoo_dir, zoo_names
from .spec import Network, schema

__all__ = [
    "DnetError",
    "Network",
    "Override",
    "Span",
    "format_source",
    "load",
    "load_bundle",
    "parse",
    "parse_overrides",
    "resolve",
    "schema",
    "zoo_dir",
    "zoo_names",
]
