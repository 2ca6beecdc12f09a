"""`--download`: fetch a dataset's official files (URLs and md5 sums from datasets.toml), resuming a
partial download, checking the md5 before a file takes its final name, so that a failed or corrupt
download never replaces a good file."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .data import DataError, dataset, md5sum

CHUNK = 1 << 20


def files(name: str) -> list[tuple[str, str, str]]:
    """(url, file name, md5) of each file a dataset needs; a DataError for one that cannot be fetched."""
    ds = dataset(name)
    info = ds.info
    if "archive" in info:  # CIFAR: one archive
        return [(info["url"], info["archive"], info["md5"])]
    if "files" in info:  # SVHN: a base URL and a file per split
        return [(info["url"] + f, f, info["md5"][split]) for split, f in info["files"].items()]
    if ds.loader == "folder":
        raise DataError(
            f"{name} cannot be downloaded for you: get it from its owners (ImageNet: image-net.org, after "
            "accepting its terms) and give its folder, which holds train/ and val/, with --data"
        )
    raise DataError(f"{name} needs no download")


def fetch(url: str, dest: Path, md5: str | None, quiet: bool = False) -> Path:
    """Download `url` to `dest` through `dest`.part, resuming what an earlier try left there."""
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if have and response.status != 206:  # the server sends the whole file: start again
                have = 0
            size = int(response.headers.get("Content-Length") or 0) + have
            with open(part, "ab" if have else "wb") as f:
                _copy(response, f, have, size, dest.name, quiet)
    except urllib.error.HTTPError as e:
        if e.code != 416:  # 416: nothing left to send, the part is whole
            raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(
            f"cannot download {url}: {getattr(e, 'reason', e)}; what arrived is kept in {part}: run again to resume"
        ) from None
    if md5 is not None and (got := md5sum(part)) != md5:
        part.unlink()
        raise DataError(f"{url} arrived corrupt (md5 {got}, expected {md5}): it was deleted, run again")
    os.replace(part, dest)
    return dest


def _copy(source, target, have: int, size: int, name: str, quiet: bool) -> None:
    from tqdm import tqdm

    live = not quiet and sys.stderr.isatty()
    with tqdm(
        total=size or None, initial=have, desc=name, unit="B", unit_scale=True, disable=not live, file=sys.stderr
    ) as bar:
        while chunk := source.read(CHUNK):
            target.write(chunk)
            bar.update(len(chunk))
    target.flush()


def ensure(name: str, root: str | Path | None) -> None:
    """Every file of `name` present under the data root, downloaded where missing."""
    from .data import default_root

    folder = Path(root) if root is not None else default_root()
    for url, file, md5 in files(name):
        if not (folder / file).is_file():
            print(f"downloading {url} to {folder}")
        fetch(url, folder / file, md5)
