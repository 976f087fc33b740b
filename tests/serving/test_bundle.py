"""Bundles on the serving side: reading a directory, and unpacking untrusted archives without harm."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from liverank.exporter.archive import archive_bundle
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.bundle import Bundle, extract_bundle_archive, load_bundle_dir
from liverank.serving.errors import BundleArchiveUnsafe, BundleInvalid, BundleTooLarge
from liverank.serving.runner import OnnxRunner
from liverank.store.manifest import manifest_from_json

MAX_TOTAL_BYTES = 16 * 1024 * 1024
MAX_MEMBER_BYTES = 8 * 1024 * 1024

Entry = tuple[tarfile.TarInfo, bytes | None]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    build_synthetic_bundle(path, preset="tiny", dim=8)
    return path


@pytest.fixture
def bundle_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / "bundle"))


def _file(name: str, data: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _tar(entries: list[Entry], *, gz: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def _extract(payload: bytes, dest: Path, **limits: int) -> Path:
    return extract_bundle_archive(
        payload,
        dest,
        max_total_bytes=limits.get("max_total_bytes", MAX_TOTAL_BYTES),
        max_member_bytes=limits.get("max_member_bytes", MAX_MEMBER_BYTES),
    )


def _refused(payload: bytes, tmp_path: Path, error: type[Exception], match: str, **limits: int) -> None:
    dest = tmp_path / "out"
    with pytest.raises(error, match=match) as info:
        _extract(payload, dest, **limits)
    assert type(info.value) is error  # the subclass, not just any BundleInvalid
    assert not dest.exists()  # nothing written for a refused archive


# --- directories ----------------------------------------------------------------------------------------


def test_load_bundle_dir(tiny_dir: Path) -> None:
    bundle = load_bundle_dir(tiny_dir)
    assert bundle.manifest == manifest_from_json((tiny_dir / "manifest.json").read_bytes())
    assert bundle.onnx_bytes == (tiny_dir / "dense.onnx").read_bytes()
    assert bundle.source == tiny_dir
    assert bundle.version == "1"


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        pytest.param(lambda d: (d / "manifest.json").unlink(), r"has no manifest\.json", id="no-manifest"),
        pytest.param(lambda d: (d / "dense.onnx").unlink(), r"has no dense\.onnx", id="no-onnx"),
        pytest.param(lambda d: (d / "dense.onnx").write_bytes(b""), "is empty", id="empty-onnx"),
        pytest.param(lambda d: (d / "manifest.json").write_bytes(b"{"), "not valid JSON", id="bad-json"),
        pytest.param(lambda d: (d / "manifest.json").write_bytes(b'{"format": 1}'), "missing field", id="bad-manifest"),
        pytest.param(shutil.rmtree, "does not exist", id="no-dir"),
    ],
)
def test_broken_bundle_dir_is_refused(bundle_copy: Path, damage: Callable[[Path], object], match: str) -> None:
    damage(bundle_copy)
    with pytest.raises(BundleInvalid, match=match) as info:
        load_bundle_dir(bundle_copy)
    assert type(info.value) is BundleInvalid


# --- archives that must pass ----------------------------------------------------------------------------


def test_archive_round_trip(tiny_dir: Path, tmp_path: Path) -> None:
    dest = _extract(archive_bundle(tiny_dir), tmp_path / "out")
    assert sorted(p.name for p in dest.iterdir()) == ["dense.onnx", "manifest.json"]
    assert load_bundle_dir(dest).manifest == load_bundle_dir(tiny_dir).manifest
    assert load_bundle_dir(dest).onnx_bytes == (tiny_dir / "dense.onnx").read_bytes()


def test_plain_tar_is_accepted(tiny_dir: Path, tmp_path: Path) -> None:
    members = [_file(n, (tiny_dir / n).read_bytes()) for n in ("dense.onnx", "manifest.json")]
    dest = _extract(_tar(members, gz=False), tmp_path / "out")
    assert (dest / "dense.onnx").read_bytes() == (tiny_dir / "dense.onnx").read_bytes()


def test_existing_destination_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        _extract(archive_bundle(tiny_dir), tmp_path / "out")


# --- archives that must be refused ----------------------------------------------------------------------

MANIFEST = _file("manifest.json", b"{}")
ONNX = _file("dense.onnx", b"onnx")

UNSAFE: list[object] = [
    pytest.param([MANIFEST, ONNX, _file("../x", b"evil")], "leaves the bundle", id="dotdot"),
    pytest.param([_file("../manifest.json", b"{}"), ONNX], "leaves the bundle", id="dotdot-manifest"),
    pytest.param([MANIFEST, _file("/tmp/dense.onnx", b"x")], "absolute path", id="absolute"),
    pytest.param([MANIFEST, _file("C:\\dense.onnx", b"x")], "absolute path", id="windows-absolute"),
    pytest.param([_special("manifest.json", tarfile.SYMTYPE, "/etc/passwd"), ONNX], "is a link", id="symlink"),
    pytest.param([MANIFEST, _special("dense.onnx", tarfile.LNKTYPE, "manifest.json")], "is a link", id="hardlink"),
    pytest.param([MANIFEST, _special("dense.onnx", tarfile.CHRTYPE)], "not a regular file", id="char-device"),
    pytest.param([MANIFEST, _special("dense.onnx", tarfile.FIFOTYPE)], "not a regular file", id="fifo"),
    pytest.param([_special("manifest.json", tarfile.DIRTYPE), ONNX], "not a regular file", id="directory"),
    pytest.param([_file("./manifest.json", b"{}"), ONNX], "is not allowed", id="dot-slash"),
    pytest.param([_file("sub/manifest.json", b"{}"), ONNX], "is not allowed", id="nested"),
    pytest.param([MANIFEST, ONNX, _file("notes.txt", b"hi")], "'notes.txt' is not allowed", id="extra-member"),
    pytest.param([MANIFEST, ONNX, _file("manifest.json", b"{}")], "twice", id="duplicate"),
]


@pytest.mark.parametrize(("entries", "match"), UNSAFE)
def test_unsafe_archive_is_refused(entries: list[Entry], match: str, tmp_path: Path) -> None:
    _refused(_tar(entries), tmp_path, BundleArchiveUnsafe, match)


def test_oversize_member_is_refused(tmp_path: Path) -> None:
    payload = _tar([MANIFEST, _file("dense.onnx", bytes(4096))])
    _refused(payload, tmp_path, BundleTooLarge, "'dense.onnx' is 4096 bytes", max_member_bytes=4095)


def test_oversize_total_is_refused(tmp_path: Path) -> None:
    payload = _tar([_file("manifest.json", bytes(3000)), _file("dense.onnx", bytes(3000))])
    _refused(payload, tmp_path, BundleTooLarge, "more than 5000 bytes", max_total_bytes=5000, max_member_bytes=4000)


def test_bytes_read_are_capped_not_only_declared_sizes(tmp_path: Path) -> None:
    # A 2 MB pax header is read into memory by tarfile before any member size is known; the cap on the
    # decompressed stream stops it. It compresses to a few kB, like any decompression bomb.
    info, data = _file("manifest.json", b"{}")
    info.pax_headers = {"comment": "x" * (2 * 1024 * 1024)}
    payload = _tar([(info, data), ONNX])
    assert len(payload) < 50_000
    _refused(payload, tmp_path, BundleTooLarge, "unpacks to more than", max_total_bytes=1024 * 1024)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    _refused(_tar([MANIFEST]), tmp_path, BundleInvalid, r"lacks dense\.onnx")
    _refused(_tar([]), tmp_path, BundleInvalid, r"lacks manifest\.json and dense\.onnx")


def _truncated_plain_tar(tiny_dir: Path) -> bytes:
    members = [_file(n, (tiny_dir / n).read_bytes()) for n in ("manifest.json", "dense.onnx")]
    payload = _tar(members, gz=False)
    return payload[: len(payload) // 2]


@pytest.mark.parametrize(
    "make_payload",
    [
        pytest.param(lambda d: archive_bundle(d)[:-100], id="truncated-gzip"),
        pytest.param(lambda d: archive_bundle(d)[: len(archive_bundle(d)) // 2], id="half-gzip"),
        pytest.param(_truncated_plain_tar, id="truncated-tar"),
        pytest.param(lambda d: np.random.default_rng(0).bytes(4096), id="garbage"),
        pytest.param(lambda d: gzip.compress(b"not a tar at all" * 100), id="gzip-not-tar"),
        pytest.param(lambda d: b"\x1f\x8b" + b"\x00" * 30, id="bad-gzip"),
        pytest.param(lambda d: b"", id="empty"),
    ],
)
def test_unreadable_archive_is_refused(make_payload: Callable[[Path], bytes], tiny_dir: Path, tmp_path: Path) -> None:
    _refused(make_payload(tiny_dir), tmp_path, BundleInvalid, "not a readable tar|lacks|truncated")


# --- ONNX files a session must not be built from --------------------------------------------------------


def test_external_data_model_is_refused_even_if_the_file_is_reachable(
    bundle_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = load_bundle_dir(bundle_copy).manifest
    weights = numpy_helper.from_array(np.ones((manifest.candidate_width, 1), dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["candidates", "w"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["p_click"]),
            helper.make_node("Identity", ["p_click"], ["p_finish"]),
            helper.make_node("Identity", ["p_click"], ["p_like"]),
        ],
        "external",
        [
            helper.make_tensor_value_info("user", TensorProto.FLOAT, [1, manifest.user_width]),
            helper.make_tensor_value_info("candidates", TensorProto.FLOAT, ["n", manifest.candidate_width]),
        ],
        [helper.make_tensor_value_info(h.output, TensorProto.FLOAT, ["n", 1]) for h in manifest.heads],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(
        model,
        str(bundle_copy / "dense.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    # ONNX Runtime resolves a bytes-loaded model's external data against the working directory: put the
    # weights file there too, so only the runner's own guard can stop the load.
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    shutil.copy(bundle_copy / "weights.bin", workdir / "weights.bin")
    monkeypatch.chdir(workdir)
    with pytest.raises(BundleInvalid, match="external data") as info:
        OnnxRunner.build(load_bundle_dir(bundle_copy))
    assert type(info.value) is BundleInvalid


def test_garbage_onnx_is_refused(bundle_copy: Path) -> None:
    bundle = load_bundle_dir(bundle_copy)
    broken = Bundle(manifest=bundle.manifest, onnx_bytes=b"\x08\x07garbage", source=bundle.source)
    with pytest.raises(BundleInvalid, match="cannot be loaded"):
        OnnxRunner.build(broken)
