"""`dnetc fmt [--check] [--diff] FILES...`: lay .dnet files out canonically (dsl/format.py).

Files are rewritten in place only when their layout changes, through a temporary file and a
rename. A file that does not parse is reported with its diagnostic and left untouched. Exit
status: 0 done (or, with --check, every file formatted), 1 --check found files to reformat,
2 a file that does not parse or cannot be read.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dnetc.dsl import DnetError, format_source

SUFFIX = ".dnet"


def files(paths: Sequence[str]) -> list[Path]:
    """The .dnet files named, folders searched recursively."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(p.rglob(f"*{SUFFIX}")) if p.is_dir() else [p]
    return out


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.fmt-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="dnetc fmt", description="Lay .dnet files out in the canonical style.")
    p.add_argument("paths", nargs="+", metavar="FILE", help="spec files or folders of them; `-` reads standard input")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would be reformatted")
    p.add_argument("--diff", action="store_true", help="change nothing; print what would change")
    args = p.parse_args(argv)
    if args.paths == ["-"]:
        text = sys.stdin.read()
        try:
            sys.stdout.write(format_source(text, "<stdin>"))
        except DnetError as e:
            print(e.render(), file=sys.stderr)
            return 2
        return 0
    bad, changed = 0, []
    for path in files(args.paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            print(f"error: cannot read `{path}`: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            bad += 1
            continue
        try:
            out = format_source(text, str(path))
        except DnetError as e:
            print(e.render(), file=sys.stderr)
            bad += 1
            continue
        if out == text:
            continue
        changed.append(path)
        if args.diff:
            sys.stdout.writelines(
                difflib.unified_diff(text.splitlines(True), out.splitlines(True), str(path), str(path))
            )
        elif args.check:
            print(f"would reformat {path}")
        else:
            _write(path, out)
            print(f"reformatted {path}")
    if bad:
        return 2
    if changed and (args.check or args.diff):
        print(f"{len(changed)} file{'s' if len(changed) > 1 else ''} would be reformatted", file=sys.stderr)
        return 1
    return 0
