"""``multikd data download`` and ``multikd teachers download`` against a local HTTP server.

The server (http.server in a thread on 127.0.0.1) honours ``Range: bytes=N-`` and can cut
a response after some bytes, so the tests see resumed, corrupt and refused downloads
without the network. The CIFAR tarball holds the package's own look-alike files; the
teacher archive holds random-weight zoo checkpoints in mdistiller's layout.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from multikd import data
from multikd.bench import published as bench_published
from multikd.cli import main
from multikd.data import download
from multikd.data.cifar import CIFAR_LAYOUTS
from multikd.errors import CheckpointError, DataError, DownloadError, StorageError
from multikd.models import create_model, list_models
from multikd.models import published

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "cifar100"
ZOO = Path(__file__).resolve().parent / "reference" / "cifar_zoo.json"


class Server:
    """Serves ``files`` (path -> bytes); ``cut[path] = n`` ends that path's next response
    after n bytes (the announced length stays whole); ``ignore_range`` answers every
    request with the whole file; ``requests`` lists (path, Range header) as they came."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                rest = body[start:]
                cut = server.cut.pop(self.path, None)
                if cut is not None:
                    rest = rest[:cut]
                    self.close_connection = True
                self.wfile.write(rest)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def cifar_tarball(tmp_path_factory) -> bytes:
    """cifar-100-python.tar.gz as the dataset page packs it, holding look-alike files."""
    root = tmp_path_factory.mktemp("synth")
    folder = data.write_fake_cifar(root, dataset="cifar100", train=200, test=50, seed=1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def _md5(blob: bytes) -> str:
    return hashlib.md5(blob).hexdigest()


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture
def pinned(monkeypatch, server, cifar_tarball):
    """The test tarball served where cifar100's pinned URL points, with its md5 pinned."""
    server.files["/cifar-100-python.tar.gz"] = cifar_tarball
    lay = dataclasses.replace(CIFAR_LAYOUTS["cifar100"],
                              url=server.url("/cifar-100-python.tar.gz"),
                              archive_md5=_md5(cifar_tarball))
    monkeypatch.setitem(CIFAR_LAYOUTS, "cifar100", lay)
    return lay


# ----------------------------------------------------------------------------- data


def test_download_extracts_the_checked_tarball_and_leaves_only_the_folder(pinned, tmp_path):
    folder = download.download_cifar("cifar100", tmp_path / "d", progress=False)
    assert folder == tmp_path / "d" / "cifar-100-python"
    assert _leftovers(tmp_path / "d") == ["cifar-100-python"]
    images, labels, names, _ = data.load_cifar("cifar100", tmp_path / "d", "test")
    assert images.shape == (50, 32, 32, 3) and len(names) == 100


def test_cli_downloads_from_a_mirror_with_its_md5_then_verifies(server, cifar_tarball,
                                                                tmp_path, capsys):
    server.files["/mirror/c100.tgz"] = cifar_tarball
    code = main(["data", "download", "--data-root", str(tmp_path), "--quiet",
                 "--url", server.url("/mirror/c100.tgz"), "--md5", _md5(cifar_tarball)])
    out = capsys.readouterr().out
    assert code == 1  # the look-alike files are not the official release: verify says so
    assert "cifar100 in" in out and "DIFFERS" in out
    assert _leftovers(tmp_path) == ["cifar-100-python"]


def test_an_interrupted_download_keeps_its_part_and_the_next_call_resumes(pinned, server,
                                                                          tmp_path):
    size = len(server.files["/cifar-100-python.tar.gz"])
    server.cut["/cifar-100-python.tar.gz"] = size // 3
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download.download_cifar("cifar100", tmp_path, progress=False, retries=0)
    assert _leftovers(tmp_path) == ["cifar-100-python.tar.gz.part"]
    assert (tmp_path / "cifar-100-python.tar.gz.part").stat().st_size == size // 3

    download.download_cifar("cifar100", tmp_path, progress=False)
    assert server.requests[-1][1] == f"bytes={size // 3}-"
    assert _leftovers(tmp_path) == ["cifar-100-python"]
    assert data.verify_checksums("cifar100", tmp_path).rows  # every file is there


def test_a_transfer_that_stops_is_resumed_within_the_same_call(pinned, server, tmp_path):
    server.cut["/cifar-100-python.tar.gz"] = 1000
    download.download_cifar("cifar100", tmp_path, progress=False, retry_wait_s=0)
    assert [r for _, r in server.requests] == [None, "bytes=1000-"]
    assert _leftovers(tmp_path) == ["cifar-100-python"]


def test_a_server_that_ignores_range_sends_the_whole_file_again(pinned, server, tmp_path):
    blob = server.files["/cifar-100-python.tar.gz"]
    (tmp_path / "cifar-100-python.tar.gz.part").write_bytes(b"stale bytes from elsewhere")
    server.ignore_range = True
    got = download.fetch(pinned.url, tmp_path / "cifar-100-python.tar.gz",
                         md5=pinned.archive_md5, progress=False)
    assert got.path.read_bytes() == blob


def test_a_part_that_is_already_whole_is_not_downloaded_again(pinned, server, tmp_path):
    blob = server.files["/cifar-100-python.tar.gz"]
    (tmp_path / "cifar-100-python.tar.gz.part").write_bytes(blob)
    got = download.fetch(pinned.url, tmp_path / "cifar-100-python.tar.gz",
                         md5=pinned.archive_md5, progress=False)
    assert got.md5 == pinned.archive_md5 and server.requests[0][1] == f"bytes={len(blob)}-"


def test_a_wrong_checksum_deletes_the_file_and_extracts_nothing(pinned, server, tmp_path):
    blob = bytearray(server.files["/cifar-100-python.tar.gz"])
    blob[len(blob) // 2] ^= 0xFF
    server.files["/cifar-100-python.tar.gz"] = bytes(blob)
    with pytest.raises(DownloadError, match="arrived with md5 .* nothing was extracted"):
        download.download_cifar("cifar100", tmp_path, progress=False)
    assert _leftovers(tmp_path) == []


def test_a_refused_connection_is_a_clear_error_and_leaves_nothing(tmp_path, capsys):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["data", "download", "--data-root", str(tmp_path / "d"), "--quiet",
                 "--url", f"http://127.0.0.1:{port}/c.tgz"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("multikd: error: cannot download") and "refused" in err
    assert "--url" in err
    assert not (tmp_path / "d").exists()


def test_an_http_error_names_the_status(pinned, server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download.fetch(server.url("/nothing-here"), tmp_path / "x", progress=False)


def test_a_full_disk_keeps_the_part_and_says_how_to_resume(pinned, monkeypatch, tmp_path):
    class FullDisk(io.BytesIO):
        def __init__(self, path, mode):
            super().__init__()
            self.real = open(path, mode)

        def write(self, chunk):
            self.real.write(chunk[:100])
            self.real.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.real.close()

    monkeypatch.setattr(download, "_open_part", FullDisk)
    with pytest.raises(StorageError, match="no space left.*resumes the download"):
        download.download_cifar("cifar100", tmp_path, progress=False)
    assert _leftovers(tmp_path) == ["cifar-100-python.tar.gz.part"]


def test_a_folder_that_is_not_official_is_replaced_only_with_force(pinned, tmp_path):
    data.write_fake_cifar(tmp_path, dataset="cifar100", train=1, test=1, seed=0)
    with pytest.raises(DataError, match="--force"):
        download.download_cifar("cifar100", tmp_path, progress=False)
    download.download_cifar("cifar100", tmp_path, progress=False, force=True)
    assert data.load_cifar("cifar100", tmp_path, "test")[0].shape[0] == 50
    assert _leftovers(tmp_path) == ["cifar-100-python"]


def test_md5_override_needs_a_mirror(tmp_path):
    with pytest.raises(DataError, match="with --url"):
        download.download_cifar("cifar100", tmp_path, md5="0" * 32)


def test_an_archive_member_outside_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with download.staging(tmp_path / "out") as tmp, \
            pytest.raises(DownloadError, match="outside the folder"):
        download.extract_tar(archive, tmp)
    assert not (tmp_path / "escaped").exists() and _leftovers(tmp_path / "out") == []


# ----------------------------------------------------------------------------- teachers

SMALL = (published.PublishedTeacher("resnet8", 1.0), published.PublishedTeacher("wrn_16_1", 1.0))


def _teacher_tar(files: dict[str, str]) -> bytes:
    """A tar laid out as mdistiller's: cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth
    (``files``: member folder -> the architecture whose random weights it holds)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i, (folder, arch) in enumerate(files.items()):
            torch.manual_seed(i)
            blob = io.BytesIO()
            torch.save({"model": create_model(arch, num_classes=100).state_dict(),
                        "epoch": 240}, blob)
            info = tarfile.TarInfo(f"cifar_teachers/{folder}/ckpt_epoch_240.pth")
            info.size = blob.tell()
            blob.seek(0)
            tar.addfile(info, blob)
    return buffer.getvalue()


@pytest.fixture
def release(monkeypatch, server):
    """The mdistiller source, narrowed to two small teachers, served by ``server``."""
    server.files["/cifar_teachers.tar"] = _teacher_tar(
        {f"{t.arch}_vanilla": t.arch for t in SMALL})
    rel = published.TeacherRelease("mdistiller", server.url("/cifar_teachers.tar"),
                                   "cifar_teachers.tar", SMALL)
    monkeypatch.setitem(published.TEACHER_RELEASES, "mdistiller", rel)
    return rel


@pytest.mark.slow
def test_teachers_download_lays_out_checks_and_measures(release, server, tmp_path, capsys,
                                                        fake_cifar100_root):
    out = tmp_path / "teachers"
    server.cut["/cifar_teachers.tar"] = 5000  # resumed within the call
    code = main(["teachers", "download", "--out", str(out), "--quiet", "--device", "cpu",
                 "--data-root", str(fake_cifar100_root)])
    text = capsys.readouterr().out
    assert code == 0
    assert [r for _, r in server.requests] == [None, "bytes=5000-"]
    assert sorted(_leftovers(out)) == ["resnet8_vanilla", "teachers-manifest.json",
                                       "wrn_16_1_vanilla"]
    manifest = json.loads((out / "teachers-manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(server.files["/cifar_teachers.tar"]).hexdigest()
    for teacher in SMALL:
        path = out / teacher.file
        entry = manifest["teachers"][teacher.arch]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"{teacher.file}" in text and "test " in text
    assert "not the official release" in text  # look-alike data: measured, not compared
    # the folder is a --teachers-dir: the same files are found again without a download
    count = len(server.requests)
    assert main(["teachers", "download", "--out", str(out), "--quiet", "--no-eval"]) == 0
    assert len(server.requests) == count


@pytest.mark.slow
def test_teachers_are_compared_with_the_published_accuracy_on_official_data(
        release, tmp_path, fake_cifar100_root, monkeypatch):
    out = bench_published.download_teachers(tmp_path / "t", progress=False)
    monkeypatch.setattr(bench_published, "verify_checksums",
                        lambda *a: data.ChecksumReport("cifar100", Path("."), []))
    report = bench_published.check_teachers(out, data_root=fake_cifar100_root, device="cpu")
    assert report.compared
    far = [r for r in report.rows if abs(r.test_acc - r.teacher.test_acc) > 1.0]
    assert report.all_ok == (not far) and ("DIFFERS" in report.text()) == bool(far)


def test_without_cifar100_the_teachers_are_checked_but_not_measured(release, tmp_path):
    out = bench_published.download_teachers(tmp_path / "t", progress=False)
    report = bench_published.check_teachers(out, data_root=tmp_path / "none")
    assert report.all_ok and all(r.test_acc is None for r in report.rows)
    assert "multikd data download" in report.text()


def test_a_checkpoint_that_does_not_fit_puts_nothing_in_place(release, server, tmp_path):
    server.files["/cifar_teachers.tar"] = _teacher_tar(
        {"resnet8_vanilla": "resnet14", "wrn_16_1_vanilla": "wrn_16_1"})
    with pytest.raises(CheckpointError, match="does not fit resnet8"):
        bench_published.download_teachers(tmp_path, progress=False)
    assert _leftovers(tmp_path) == []


def test_an_archive_without_the_teachers_is_refused(release, server, tmp_path):
    server.files["/cifar_teachers.tar"] = _teacher_tar({"resnet8_vanilla": "resnet8"})
    with pytest.raises(DownloadError, match="holds no wrn_16_1_vanilla"):
        bench_published.download_teachers(tmp_path, progress=False)
    assert _leftovers(tmp_path) == []


def test_teachers_already_there_are_replaced_only_with_force(release, tmp_path):
    (tmp_path / "resnet8_vanilla").mkdir()
    (tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth").write_bytes(b"mine")
    with pytest.raises(DownloadError, match="--force"):
        bench_published.download_teachers(tmp_path, progress=False)
    bench_published.download_teachers(tmp_path, progress=False, force=True)
    assert bench_published.check_teachers(tmp_path, evaluate=False).all_ok


def test_the_published_table_is_what_the_suites_and_the_zoo_expect():
    table = {t.file: t for t in published.PUBLISHED_TEACHERS}
    zoo = json.loads(ZOO.read_text())
    for teacher in table.values():
        assert teacher.arch in list_models() and teacher.arch in zoo
    seen = set()
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        for spec in (yaml.safe_load(path.read_text()).get("teachers") or {}).values():
            if spec.get("published"):
                teacher = table[spec["published"]]
                assert spec["arch"] == teacher.arch, path
                assert spec.get("expected_acc") in (None, teacher.test_acc), path
                seen.add(teacher.arch)
    assert seen  # the suites name published teachers


def test_a_missing_dataset_points_at_the_download_command(tmp_path):
    with pytest.raises(DataError, match="multikd data download --dataset cifar10 "):
        data.load_cifar("cifar10", tmp_path, "test")
