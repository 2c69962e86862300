"""Downloads from a local HTTP server: mirrors, verification, idempotence, archives."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

import _fixtures as fx
from memdistill.data import load_dataset, locate_dataset
from memdistill.errors import DataNotFoundError, IntegrityError

T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class _Server:
    """Serves ``folder`` on 127.0.0.1; records every requested path."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
        )
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, sub: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{sub}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    srv = _Server(folder)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def altered_t10k(data_root) -> dict[str, bytes]:
    """Valid gzips of the t10k files with their last byte altered."""
    out = {}
    for name in T10K:
        payload = bytearray(gzip.decompress((data_root / "MNIST" / "raw" / name).read_bytes()))
        payload[-1] ^= 1
        out[name] = gzip.compress(bytes(payload), compresslevel=1)
    return out


@pytest.fixture
def mnist_mirrors(server, data_root, altered_t10k):
    """good/: the real t10k files; bad/: a valid gzip of altered data; missing/: 404."""
    good, bad = server.folder / "good", server.folder / "bad"
    good.mkdir()
    bad.mkdir()
    for name in T10K:
        (good / name).symlink_to(data_root / "MNIST" / "raw" / name)
        (bad / name).write_bytes(altered_t10k[name])
    return {"good": server.url("good"), "bad": server.url("bad"), "missing": server.url("missing")}


def _unused_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_falls_through_mirrors_and_is_idempotent(tmp_path, server, mnist_mirrors, mnist_test):
    root = tmp_path / "root"
    mirrors = [mnist_mirrors["missing"], mnist_mirrors["good"]]
    ds = load_dataset("mnist", "test", root=root, download=True, mirrors=mirrors, retries=1)
    assert np.array_equal(ds.images.numpy(), mnist_test.images.numpy())
    assert np.array_equal(ds.labels.numpy(), mnist_test.labels.numpy())
    assert _leftovers(root) == sorted(T10K)  # in MNIST/raw, no temporary files left
    assert all((root / "MNIST" / "raw" / n).is_file() for n in T10K)
    assert [r for r in server.requests if "/good/" in r] == [f"/good/{n}" for n in T10K]
    assert len([r for r in server.requests if "/missing/" in r]) == 2  # one 404 each, no retries
    assert locate_dataset("mnist", root=root, split="test").found

    before = len(server.requests)
    again = load_dataset("mnist", "test", root=root, download=True, mirrors=mirrors, retries=1)
    assert len(server.requests) == before  # nothing fetched twice
    assert np.array_equal(again.labels.numpy(), ds.labels.numpy())


def test_corrupted_download_is_rejected_and_removed(tmp_path, mnist_mirrors):
    root = tmp_path / "root"
    with pytest.raises(IntegrityError) as err:
        load_dataset("mnist", "test", root=root, download=True, mirrors=[mnist_mirrors["bad"]], retries=1)
    msg = str(err.value)
    assert "failed verification" in msg and "t10k-images-idx3-ubyte.gz" in msg
    assert mnist_mirrors["bad"] in msg
    assert _leftovers(root) == []  # neither the bad file nor a temporary one


def test_corrupted_mirror_is_skipped_for_a_good_one(tmp_path, server, mnist_mirrors):
    root = tmp_path / "root"
    ds = load_dataset("mnist", "test", root=root, download=True, retries=1,
                      mirrors=[mnist_mirrors["bad"], mnist_mirrors["good"]])
    assert len(ds) == 10000
    assert _leftovers(root) == sorted(T10K)


def test_a_corrupt_local_file_is_replaced(tmp_path, data_root, server, mnist_mirrors):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copyfile(data_root / "MNIST" / "raw" / T10K[0], raw / T10K[0])  # good, kept
    (raw / T10K[1]).write_bytes(b"garbage")
    with pytest.raises(IntegrityError):
        load_dataset("mnist", "test", root=tmp_path / "root")
    ds = load_dataset("mnist", "test", root=tmp_path / "root", download=True,
                      mirrors=[mnist_mirrors["good"]], retries=1)
    assert len(ds) == 10000
    assert server.requests == [f"/good/{T10K[1]}"]  # only the broken file was fetched


def test_offline_error_names_files_mirrors_and_fixes(tmp_path, mnist_mirrors):
    root = tmp_path / "root"
    dead = _unused_port_url()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", "test", root=root, download=True, retries=1,
                     mirrors=[mnist_mirrors["missing"], dead])
    msg = str(err.value)
    for name in T10K:
        assert name in msg
        assert mnist_mirrors["missing"] + name in msg and dead + name in msg
    assert "HTTP 404" in msg
    assert str(root / "MNIST" / "raw") in msg  # searched, and where to copy them
    assert "copy the files into" in msg and "MEMDISTILL_DATA" in msg
    assert _leftovers(root) == []


def test_without_download_the_message_suggests_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="download=True"):
        load_dataset("mnist", "test", root=tmp_path)


# ---------------------------------------------------------------------------- archives
def test_cifar10_archive_download_extracts_only_declared_members(tmp_path, server):
    rng = np.random.default_rng(5)
    src = tmp_path / "src"
    w = fx.write_cifar10(src, rng)
    evil = {"../escaped.txt": b"x", "cifar-10-batches-py/../../escaped2.txt": b"x", "extra.txt": b"x"}
    archive_md5 = fx.tar_folder(server.folder / "cifar-10-python.tar.gz", src, "cifar-10-batches-py", evil)
    root = tmp_path / "deep" / "root"
    sums = {**w.checksums, "cifar-10-python.tar.gz": archive_md5}
    ds = load_dataset("cifar10", "test", root=root, download=True, checksums=sums,
                      mirrors=[server.url("")[:-1]], retries=1)
    assert np.array_equal(ds.images.numpy(), w.images["test"])
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(w.checksums)
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not (tmp_path / "escaped2.txt").exists()
    assert not (root / "extra.txt").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # scratch folders removed
    n = len(server.requests)
    train = load_dataset("cifar10", "train", root=root, download=True, checksums=sums,
                         mirrors=[server.url("")[:-1]], retries=1)
    assert len(server.requests) == n and len(train) == 15


def test_cifar10_archive_with_wrong_md5(tmp_path, server):
    src = tmp_path / "src"
    w = fx.write_cifar10(src, np.random.default_rng(6))
    fx.tar_folder(server.folder / "cifar-10-python.tar.gz", src, "cifar-10-batches-py")
    with pytest.raises(IntegrityError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", "test", root=tmp_path / "root", download=True, checksums=w.checksums,
                     mirrors=[server.url("")[:-1]], retries=1)  # official archive md5
    assert _leftovers(tmp_path / "root") == []


def test_tiny_imagenet_zip_download(tmp_path, server):
    src = tmp_path / "src"
    w = fx.write_tiny_imagenet(src, np.random.default_rng(7))
    md5 = fx.zip_folder(server.folder / "tiny-imagenet-200.zip", src, "tiny-imagenet-200")
    root = tmp_path / "root"
    opts = {**w.extra["options"], "checksums": {"tiny-imagenet-200.zip": md5}}
    ds = load_dataset("tiny-imagenet", "test", root=root, download=True,
                      mirrors=[server.url("")[:-1]], retries=1, **opts)
    assert np.array_equal(ds.images.numpy(), w.images["test"])
    assert (root / "tiny-imagenet-200" / "wnids.txt").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_tiny_imagenet_zip_with_path_traversal_is_refused(tmp_path, server):
    src = tmp_path / "src"
    w = fx.write_tiny_imagenet(src, np.random.default_rng(8))
    md5 = fx.zip_folder(server.folder / "tiny-imagenet-200.zip", src, "tiny-imagenet-200",
                        {"tiny-imagenet-200/../../escaped.txt": b"x"})
    root = tmp_path / "root"
    opts = {**w.extra["options"], "checksums": {"tiny-imagenet-200.zip": md5}}
    with pytest.raises(IntegrityError, match="refusing member"):
        load_dataset("tiny-imagenet", "train", root=root, download=True,
                     mirrors=[server.url("")[:-1]], retries=1, **opts)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (root / "tiny-imagenet-200").exists()
