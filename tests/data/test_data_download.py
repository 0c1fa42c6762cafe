"""Downloads against a local HTTP server on 127.0.0.1, checksum failures, offline errors, data-dir order."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading

import numpy as np
import pytest

import mlcanon.data as D
from mlcanon.data import files, vision
from mlcanon.errors import UserError


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL) of an http.server on 127.0.0.1 in a thread."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    t.join()


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Empty arg / env / home folders; MLCANON_DATA and HOME point at the last two."""
    a, b, home = tmp_path / "arg", tmp_path / "env", tmp_path / "home"
    for d in (a, b, home):
        d.mkdir()
    monkeypatch.setenv("MLCANON_DATA", str(b))
    monkeypatch.setenv("HOME", str(home))
    return a, b, home / ".cache" / "mlcanon"


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused: as good as offline)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def all_files(d):
    return sorted(p.name for p in d.rglob("*") if p.is_file())


def test_data_dirs_order(dirs):
    a, b, cache = dirs
    assert files.data_dirs(a) == [a, b, cache]
    assert files.data_dirs(None) == [b, cache]


def test_download_success_real_mnist_checksums(real_data, server, dirs, monkeypatch):
    root, url = server
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (root / f).symlink_to(real_data / "mnist" / f)
    monkeypatch.setenv("MLCANON_MIRROR_MNIST", url)
    a, b, _cache = dirs
    ds = D.load("mnist", "test", data_dir=a)  # nothing on disk: downloaded from 127.0.0.1
    assert len(ds) == 10000 and int(ds.targets[0]) == 7
    assert all_files(a / "mnist") == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert "md5:" + files.file_hash(a / "mnist" / "t10k-labels-idx1-ubyte.gz", "md5") == \
        vision.MNIST_FILES["t10k-labels-idx1-ubyte.gz"]
    assert not (b / "mnist").exists() or all_files(b / "mnist") == []


def test_checksum_mismatch_leaves_no_partial_file(server, dirs, monkeypatch):
    root, url = server
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x" * 100_000)  # wrong content under the right name
    monkeypatch.setitem(files.MIRRORS, "mnist", [url])
    a, _, _ = dirs
    with pytest.raises(UserError, match="checksum mismatch") as e:
        files.fetch("mnist", "t10k-labels-idx1-ubyte.gz", a, checksum=vision.MNIST_FILES["t10k-labels-idx1-ubyte.gz"])
    assert "ec29112dd5afa0611ce80d1b7f02629c" in str(e.value)
    assert all_files(a) == []  # neither the file nor a .part temp file


def test_fetch_verifies_sha256_and_renames_atomically(server, dirs, monkeypatch):
    root, url = server
    monkeypatch.setenv("MLCANON_MIRROR_SOMESET", url)
    payload = os.urandom(3 * (1 << 20) + 17)  # more than one chunk
    (root / "blob.bin").write_bytes(payload)
    a, _, _ = dirs
    good = "sha256:" + hashlib.sha256(payload).hexdigest()
    p = files.fetch("someset", "blob.bin", a, checksum=good)
    assert p == a / "someset" / "blob.bin" and p.read_bytes() == payload
    assert all_files(a) == ["blob.bin"]


def test_http_404_and_offline_errors_name_files_folders_and_fix(server, dirs, monkeypatch):
    _, url = server
    a, b, cache = dirs
    monkeypatch.setitem(files.MIRRORS, "tinyshakespeare", [url, closed_port_url()])  # 404, then refused
    with pytest.raises(UserError) as e:
        D.load("text:tinyshakespeare", data_dir=a)
    msg = str(e.value)
    assert "input.txt" in msg and "404" in msg
    for d in (a, b, cache):
        assert str(d / "tinyshakespeare") in msg
    assert "--data-dir" in msg and "MLCANON_DATA" in msg
    assert not (a / "tinyshakespeare").exists()  # no partial file, not even an empty folder


def test_existing_file_found_in_any_folder_before_download(real_data, dirs, monkeypatch):
    a, _b, cache = dirs
    monkeypatch.setenv("MLCANON_MIRROR_TINYSHAKESPEARE", closed_port_url())  # any download would fail
    (cache / "tinyshakespeare").mkdir(parents=True)
    (cache / "tinyshakespeare" / "input.txt").symlink_to(real_data / "tinyshakespeare" / "input.txt")
    assert files.find_file("tinyshakespeare", "input.txt", a) == cache / "tinyshakespeare" / "input.txt"
    ds = D.load("text:tinyshakespeare", "test", data_dir=a, block_size=8)
    assert len(ds.text) > 0


def test_data_dir_precedence(dirs):
    a, b, cache = dirs
    for d, text in ((cache, "cache"), (b, "env"), (a, "arg")):
        (d / "someset").mkdir(parents=True)
        (d / "someset" / "f.txt").write_text(text)
        # the folder just filled is the highest-priority one holding the file
        assert files.find_file("someset", "f.txt", a).read_text() == text


def test_download_goes_to_first_writable_folder(server, dirs, tmp_path, monkeypatch):
    root, url = server
    (root / "f.txt").write_text("hello")
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder under a regular file cannot be created
    _a, b, _ = dirs
    monkeypatch.setenv("MLCANON_MIRROR_SOMESET", url)
    p = files.fetch("someset", "f.txt", blocker / "data", checksum="sha256:" + hashlib.sha256(b"hello").hexdigest())
    assert p == b / "someset" / "f.txt"


def test_binarized_amat_download_verified_by_decoded_sum(server, dirs, monkeypatch):
    root, url = server
    arr = (np.random.default_rng(0).random((4, 784)) < 0.2).astype(np.uint8)
    (root / "binarized_mnist_test.amat").write_text("\n".join(" ".join(map(str, r)) for r in arr) + "\n")
    monkeypatch.setitem(files.MIRRORS, "binarized-mnist", [url])
    a, _, _ = dirs
    with pytest.raises(UserError, match="sha256"):  # not the real binarization: refused, nothing kept
        D.load("binarized-mnist", "test", data_dir=a)
    assert all_files(a) == []
    monkeypatch.setitem(vision.BINARIZED_SHA256, "test", hashlib.sha256(arr.tobytes()).hexdigest())
    ds = D.load("binarized-mnist", "test", data_dir=a)
    assert ds.x.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(ds.x.reshape(4, 784).numpy(), arr)
    assert all_files(a) == ["binarized_mnist_test.amat"]


def test_offline_error_names_every_missing_file(dirs, monkeypatch):
    monkeypatch.setitem(files.MIRRORS, "fashion-mnist", [closed_port_url()])
    a, b, cache = dirs
    with pytest.raises(UserError) as e:
        D.load("fashion-mnist", "test", data_dir=a)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert all(str(d / "fashion-mnist") in msg for d in (a, b, cache))
    assert "--data-dir" in msg and "MLCANON_DATA" in msg
