"""`--download`: resumes a partial file, checks the md5 before the file takes its name."""

from __future__ import annotations

import hashlib
import http.server
import threading
from typing import ClassVar

import pytest

from dnetc.runtime.data import DataError, dataset
from dnetc.runtime.download import fetch, files

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path, honouring `Range: bytes=N-` unless ranges are off."""

    ranges = True
    seen: ClassVar[list[str | None]] = []

    def do_GET(self):
        wanted = self.headers.get("Range")
        type(self).seen.append(wanted)
        start = int(wanted.split("=")[1].rstrip("-")) if wanted and self.ranges else 0
        if start >= len(PAYLOAD):
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Server.seen, Server.ranges = [], True
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()


def test_a_partial_download_resumes(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:300_000])
    fetch(server, dest, MD5, quiet=True)
    assert dest.read_bytes() == PAYLOAD and Server.seen == ["bytes=300000-"]
    assert not (tmp_path / "file.bin.part").exists()
    fetch(server, dest, MD5, quiet=True)  # present and sound: nothing fetched
    assert len(Server.seen) == 1


def test_a_server_without_ranges_starts_again(server, tmp_path):
    Server.ranges = False
    (tmp_path / "file.bin.part").write_bytes(b"x" * 1000)
    fetch(server, tmp_path / "file.bin", MD5, quiet=True)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_a_wrong_md5_replaces_nothing(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"the old file")
    with pytest.raises(DataError, match="arrived corrupt"):
        fetch(server, dest, "0" * 32, quiet=True)
    assert dest.read_bytes() == b"the old file" and not (tmp_path / "file.bin.part").exists()


def test_a_broken_connection_keeps_what_arrived(tmp_path):
    with pytest.raises(DataError, match="run again to resume"):
        fetch("http://127.0.0.1:9/none", tmp_path / "f", None, quiet=True)


def test_the_url_table():
    info = dataset("cifar10").info
    assert files("cifar10") == [(info["url"], "cifar-10-python.tar.gz", info["md5"])]
    svhn = files("svhn")
    assert [f for _, f, _ in svhn] == ["train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"]
    assert svhn[0][0] == "http://ufldl.stanford.edu/housenumbers/train_32x32.mat"
    with pytest.raises(DataError, match=r"image-net\.org"):
        files("imagenet")
