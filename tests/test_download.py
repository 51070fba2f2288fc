"""Download helpers against a loopback HTTP server (with Range support) serving archives the tests
make: layout after unpacking, idempotence, resuming, checksums, and refusal of path traversal."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from asit.datasets import get_dataset
from asit.datasets.download import (
    ChecksumError,
    CorruptArchiveError,
    UnsafeArchiveError,
    download_dataset,
    download_file,
    extract_archive,
    main,
)
from layouts import write_esc50, write_speech_commands


class ArchiveHandler(BaseHTTPRequestHandler):
    """Serves ``server.files[path]``; honours ``Range: bytes=N-``; records each request."""

    def do_GET(self):
        body = self.server.files.get(self.path)
        wanted = self.headers.get("Range")
        self.server.requests.append((self.path, wanted))
        if body is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1)) if wanted else 0
        if start >= len(body) and wanted:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        # Count before writing: the client may finish reading, and the test assert, before
        # this thread runs another line after the write.
        self.server.bytes_sent += len(body) - start
        self.wfile.write(body[start:])

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server(monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):  # talk to the loopback server directly
        monkeypatch.delenv(proxy, raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ArchiveHandler)
    httpd.files, httpd.requests, httpd.bytes_sent = {}, [], 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_folder(folder: Path, top: str) -> bytes:
    """A zip like GitHub's branch archives: everything under one top folder."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"{top}/{path.relative_to(folder)}")
    return buffer.getvalue()


def tar_folder(folder: Path, prefix: str = "./") -> bytes:
    """A .tar.gz like Speech Commands': members at the top level, named ./<word>/..."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for path in sorted(folder.iterdir()):
            tf.add(path, f"{prefix}{path.name}")
    return buffer.getvalue()


def tar_with(name: str, data: bytes = b"x", link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        info = tarfile.TarInfo(name)
        if link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tf.addfile(info)
        else:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_esc50_download_unpacks_the_loader_layout_and_is_idempotent(server, tmp_path, capsys):
    archive = zip_folder(write_esc50(tmp_path / "src", num_classes=2), "ESC-50-master")
    server.files["/master.zip"] = archive
    root = tmp_path / "data"
    dest = download_dataset("esc50", root, url=server.url + "/master.zip", sha256=sha256(archive), progress=False)
    assert dest == root / "esc50" and (dest / "meta" / "esc50.csv").is_file()  # the top folder is dropped
    assert len(get_dataset("esc50", "all", dest)) == 10
    assert sorted(p.name for p in root.iterdir()) == ["esc50"]  # archive removed, no temporary folder left
    # Again, through the CLI: detected as done, nothing fetched.
    assert main(["esc50", "--root", str(root), "--url", server.url + "/master.zip", "--quiet"]) == 0
    assert len(server.requests) == 1 and "already downloaded" in capsys.readouterr().out


def test_speech_commands_tarball_unpacks_in_place(server, tmp_path):
    words = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "bed")
    archive = tar_folder(write_speech_commands(tmp_path / "src", 1, words=words, seconds=0.1))
    server.files["/sc.tar.gz"] = archive
    dest = download_dataset("speech_commands_v1", tmp_path / "data", url=server.url + "/sc.tar.gz",
                            sha256=sha256(archive), keep_archive=True, progress=False)
    assert dest == tmp_path / "data" / "speech_commands_v0.01" and (dest / "testing_list.txt").is_file()
    assert (tmp_path / "data" / "speech_commands_v0.01.tar.gz").read_bytes() == archive  # kept on request
    assert get_dataset("speech_commands_v1", "test", dest).num_classes == 12


def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    payload = bytes(range(256)) * 400
    server.files["/big.bin"] = payload
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(payload[:30000])
    download_file(server.url + "/big.bin", dest, sha256(payload), progress=False)
    assert dest.read_bytes() == payload and not (tmp_path / "big.bin.part").exists()
    assert server.requests == [("/big.bin", "bytes=30000-")] and server.bytes_sent == len(payload) - 30000
    # A .part that already holds everything: the server answers 416 and the file is completed.
    dest.unlink()
    (tmp_path / "big.bin.part").write_bytes(payload)
    download_file(server.url + "/big.bin", dest, sha256(payload), progress=False)
    assert dest.read_bytes() == payload


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path, capsys):
    server.files["/a.bin"] = b"the publisher changed this file"
    with pytest.raises(ChecksumError, match="expected 000"):
        download_file(server.url + "/a.bin", tmp_path / "a.bin", "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ChecksumError):
        download_dataset("esc50", tmp_path, url=server.url + "/a.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "esc50").exists()
    # An unknown checksum is not checked, and the computed hash is printed to record it.
    download_file(server.url + "/a.bin", tmp_path / "a.bin", None, progress=False)
    assert sha256(b"the publisher changed this file") in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["tar-dotdot", "tar-absolute", "tar-symlink", "zip-dotdot"])
def test_archives_escaping_the_target_folder_are_refused(tmp_path, kind):
    archive = tmp_path / "evil.archive"
    if kind == "zip-dotdot":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("data/ok.txt", "fine")
            zf.writestr("../evil.txt", "escaped")
        archive.write_bytes(buffer.getvalue())
    else:
        member = {"tar-dotdot": ("../evil.txt", None), "tar-absolute": (str(tmp_path / "evil.txt"), None),
                  "tar-symlink": ("data/link", "/etc/passwd")}[kind]
        archive.write_bytes(tar_with(member[0], link=member[1]))
    with pytest.raises(UnsafeArchiveError, match="nothing was extracted"):
        extract_archive(archive, tmp_path / "out" / "dest")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "out" / "dest").exists() and not (tmp_path / "out" / "dest.extracting").exists()


def test_a_corrupt_archive_is_a_clear_error_and_is_not_reused(server, tmp_path, capsys):
    archive = tar_folder(write_speech_commands(tmp_path / "src", 2, words=("yes", "no"), seconds=0.05))
    server.files["/cut.tar.gz"] = archive[: len(archive) // 2]  # a download cut short, served as if whole
    server.files["/good.tar.gz"] = archive
    root = tmp_path / "data"
    with pytest.raises(CorruptArchiveError, match="speech_commands_v0.02.tar.gz .*cut.tar.gz.* cannot be unpacked .*it was removed"):
        download_dataset("speech_commands_v2", root, url=server.url + "/cut.tar.gz", sha256=None, progress=False)
    assert sorted(p.name for p in root.iterdir()) == []  # no broken archive, no half folder
    assert main(["speech_commands_v2", "--root", str(root), "--url", server.url + "/cut.tar.gz", "--sha256", "none", "--quiet"]) == 1
    assert "cannot be unpacked" in capsys.readouterr().err
    # The next run with a good mirror downloads afresh instead of reusing the broken file.
    dest = download_dataset("speech_commands_v2", root, url=server.url + "/good.tar.gz", sha256=None, progress=False)
    assert (dest / "testing_list.txt").is_file() and server.requests[-1][0] == "/good.tar.gz"
