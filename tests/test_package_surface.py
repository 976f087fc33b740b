"""Each package's ``__init__`` exports its public names, lazily, and every liverank error sits under one root."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from liverank.errors import LiverankError


@pytest.mark.parametrize("package", ["liverank.store", "liverank.serving", "liverank.exporter"])
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError, match="no attribute"):
        module.not_a_public_name  # noqa: B018


def test_light_exports_do_not_load_heavy_modules() -> None:
    # A fresh interpreter: this one may have loaded torch or ONNX Runtime already.
    code = (
        "import sys\n"
        "from liverank.exporter import PushClient, DeltaBuilder\n"
        "from liverank.serving import Settings, ServingError\n"
        "from liverank.store import SparseDelta, StoreError\n"
        "heavy = sorted({'torch', 'onnx', 'onnxruntime', 'lmdb'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_error_base_is_a_liverank_error() -> None:
    from liverank.exporter import ExportParityError, PushError
    from liverank.serving import ConfigInvalid, ServingError
    from liverank.store import SequenceGap, StoreError
    from liverank.trainer.datasets import DatasetUnavailable

    for base in (StoreError, ServingError, PushError, ExportParityError, DatasetUnavailable):
        assert issubclass(base, LiverankError), base
        assert isinstance(base.code, str), base
        assert base.code, base
    assert ConfigInvalid.code == "invalid_config"
    gap = SequenceGap("p", 3, 5)
    assert isinstance(gap, LiverankError)
    assert (gap.code, gap.message) == ("sequence_gap", str(gap))
