"""How fast `dnetc lsp` answers after an edit, on every zoo file: the time from a changed text to its
diagnostics (parse, load, lower to the graph, passes) and of a hover on the network's name (its totals
and memory) and on each statement (shapes, counts, memory per lowering) after that.

    python bench/lsp.py --out bench/results      # about a minute on 2 cores

Each file is edited (a space appended, so nothing is cached) and analysed `--repeats` times; the
table gives the median and the largest of the medians, and the file at the largest. The target is
100 ms for both on a zoo-sized file. It runs the server's own analysis in one process (the
JSON-RPC round trip over stdio adds well under a millisecond); torch is never imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import hubconf  # noqa: E402, F401 - this checkout as `dnetc` where dnetc is not installed

sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402

from dnetc import dsl  # noqa: E402
from dnetc.dsl import ast  # noqa: E402
from dnetc.runtime.editor import Document, _walk  # noqa: E402


def measure(path: Path, repeats: int) -> dict:
    text = path.read_text()
    edits, hovers = [], []
    for i in range(repeats):
        start = time.perf_counter()
        doc = Document(text + " " * (i + 1), str(path))
        doc.diagnostics()
        edits.append(time.perf_counter() - start)
        statements = [s for net in doc.module.networks if isinstance(net, ast.NetworkDef) for s in _walk(net.body)]
        spans = [net.name_span for net in doc.module.networks] + [s.span for s in statements]
        positions = [(span.line - 1, span.col) for span in spans]
        start = time.perf_counter()
        for line, col in positions:
            doc.hover(line, col)
        hovers.append((time.perf_counter() - start) / len(positions))
    return {
        "file": path.name,
        "nodes": doc.graph.number_of_nodes() if doc.graph is not None else 0,
        "edit_to_diagnostics_ms": 1000 * statistics.median(edits),
        "hover_ms": 1000 * statistics.median(hovers),
        "hovers": len(positions),
    }


async def round_trips(names: list[str], repeats: int) -> dict:
    """Over stdio, as an editor sees it: from a didChange to its publishDiagnostics, and a hover's reply."""
    import asyncio

    from lsprotocol import types
    from pygls.lsp.client import LanguageClient

    client = LanguageClient("bench", "1")
    arrived: asyncio.Queue = asyncio.Queue()

    @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def diagnostics(params: types.PublishDiagnosticsParams) -> None:
        arrived.put_nowait(time.perf_counter())

    await client.start_io(sys.executable, "-m", "dnetc.runtime", "lsp")
    await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities()))
    client.initialized(types.InitializedParams())
    edits, hovers = [], []
    for name in names:
        path = dsl.zoo_dir() / f"{name}.dnet"
        text, uri = path.read_text(), path.as_uri()
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "dnet", 0, text)))
        await arrived.get()
        position = _first_statement(text, path)
        for i in range(1, repeats + 1):
            start = time.perf_counter()
            change = types.TextDocumentContentChangeWholeDocument(text=text + " " * i)
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(types.VersionedTextDocumentIdentifier(version=i, uri=uri), [change])
            )
            edits.append((await arrived.get() - start, name))
            start = time.perf_counter()
            await client.text_document_hover_async(types.HoverParams(types.TextDocumentIdentifier(uri), position))
            hovers.append((time.perf_counter() - start, name))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return {"edit_to_diagnostics_ms": _spread(edits), "hover_ms": _spread(hovers)}


def _spread(times: list[tuple[float, str]]) -> dict:
    """Median, 95th percentile and the largest (with its file) of (seconds, file) pairs, in ms."""
    ms = sorted(1000 * t for t, _ in times)
    worst = max(times)
    return {
        "median": statistics.median(ms),
        "p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
        "max": 1000 * worst[0],
        "max_file": f"{worst[1]}.dnet",
    }


def _first_statement(text: str, path: Path) -> Any:
    from lsprotocol import types

    doc = Document(text, str(path))
    statements = [s for net in doc.module.networks if isinstance(net, ast.NetworkDef) for s in _walk(net.body)]
    span = statements[-1].span if statements else doc.module.networks[0].name_span
    return types.Position(span.line - 1, span.col)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--files", nargs="*", help="zoo names (default: the whole zoo)")
    p.add_argument("--out", type=Path, help="write lsp-cpu.json and lsp-cpu.md here")
    args = p.parse_args()
    names = args.files or dsl.zoo_names()
    measure(dsl.zoo_dir() / f"{names[0]}.dnet", 1)  # warm-up: the grammar's parser is built once
    rows = [measure(dsl.zoo_dir() / f"{n}.dnet", args.repeats) for n in names]
    import asyncio

    trips = asyncio.run(round_trips(names, args.repeats))
    worst_edit = max(rows, key=lambda r: r["edit_to_diagnostics_ms"])
    worst_hover = max(rows, key=lambda r: r["hover_ms"])
    summary = {
        "machine": machine("cpu"),
        "command": "python bench/lsp.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else ""),
        "files": len(rows),
        "edit_to_diagnostics_ms": {
            "median": statistics.median(r["edit_to_diagnostics_ms"] for r in rows),
            "max": worst_edit["edit_to_diagnostics_ms"],
            "max_file": worst_edit["file"],
        },
        "hover_ms": {
            "median": statistics.median(r["hover_ms"] for r in rows),
            "max": worst_hover["hover_ms"],
            "max_file": worst_hover["file"],
        },
        "over_stdio": trips,
        "rows": rows,
    }
    e, h = summary["edit_to_diagnostics_ms"], summary["hover_ms"]
    table = "\n".join(
        [
            f"`dnetc lsp` on {summary['machine']}: medians of {args.repeats} edits of each of the "
            f"{len(rows)} zoo files (`{summary['command']}`)",
            "",
            "| | median over the zoo (every edit, over stdio) | largest | at |",
            "|---|---:|---:|---|",
            f"| edit to diagnostics | {e['median']:.1f} ms | {e['max']:.1f} ms | `{e['max_file']}` |",
            f"| a hover (a network's name, a statement) | {h['median']:.1f} ms | {h['max']:.1f} ms "
            f"| `{h['max_file']}` |",
            *(
                f"| over stdio: {what} | {t['median']:.1f} ms (95th percentile {t['p95']:.1f} ms) "
                f"| {t['max']:.1f} ms | `{t['max_file']}` |"
                for what, t in (
                    ("didChange to publishDiagnostics", trips["edit_to_diagnostics_ms"]),
                    ("a hover's reply (the last statement)", trips["hover_ms"]),
                )
            ),
        ]
    )
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lsp-cpu.json").write_text(json.dumps(summary, indent=2) + "\n")
        (args.out / "lsp-cpu.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
