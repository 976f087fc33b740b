"""The dense network of a bundle, run by ONNX Runtime: checked against its manifest, warmed, then run.

The session is created from bytes. ONNX Runtime resolves external-data references of a model loaded from
bytes against the process's working directory, so a bundle could otherwise read any file there; the session
is pointed at an empty private directory instead, and a model that declares external data is refused.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from liverank.serving.bundle import Bundle
from liverank.serving.errors import BundleInvalid
from liverank.store.manifest import Manifest

logger = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]

_FLOAT_TENSOR = "tensor(float)"
_EXTERNAL_DATA_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
DEFAULT_WARM_UP_BATCH_SIZES: tuple[int, ...] = (1, 64, 500)


class OnnxRunner:
    """One ONNX Runtime session for one bundle; ``run`` maps (user row, candidate rows) to head probabilities.

    Build with ``OnnxRunner.build``; the session's inputs and outputs are checked against the manifest there.
    ``run`` is safe to call from several threads at once (ONNX Runtime sessions are).
    """

    def __init__(self, session: ort.InferenceSession, bundle: Bundle) -> None:
        self._session = session
        self._bundle = bundle
        manifest = bundle.manifest
        self._user_input = manifest.user_input
        self._candidate_input = manifest.candidate_input
        self._user_width = manifest.user_width
        self._candidate_width = manifest.candidate_width
        self._head_names = [head.name for head in manifest.heads]
        self._output_names = [head.output for head in manifest.heads]

    @classmethod
    def build(cls, bundle: Bundle, *, intra_op_threads: int = 1) -> OnnxRunner:
        """Create the session for ``bundle`` and check it against the manifest; ``BundleInvalid`` if not."""
        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be at least 1, got {intra_op_threads}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3  # errors only: a refused bundle is reported through BundleInvalid
        started_s = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="liverank-no-external-data-") as empty_dir:
            options.add_session_config_entry(_EXTERNAL_DATA_FOLDER_KEY, empty_dir)
            try:
                session = ort.InferenceSession(
                    bundle.onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # ORT raises pybind11 classes that share no base but Exception.
                raise _load_error(bundle, exc) from exc
        _check_inputs(session, bundle.manifest)
        _check_outputs(session, bundle.manifest)
        logger.info(
            "built ONNX session for %s version %s in %.1f ms (%d intra-op threads)",
            bundle.manifest.model,
            bundle.manifest.version,
            (time.perf_counter() - started_s) * 1000,
            intra_op_threads,
        )
        return cls(session, bundle)

    @property
    def bundle(self) -> Bundle:
        return self._bundle

    @property
    def manifest(self) -> Manifest:
        return self._bundle.manifest

    def warm_up(self, batch_sizes: Sequence[int] = DEFAULT_WARM_UP_BATCH_SIZES, *, seed: int = 0) -> None:
        """Run seeded random inputs of each batch size; ``BundleInvalid`` if a run fails or gives non-finite
        or wrongly shaped outputs. Also pays ONNX Runtime's first-run costs before real requests arrive."""
        rng = np.random.default_rng(seed)
        for n_rows in batch_sizes:
            user = rng.standard_normal((1, self._user_width), dtype=np.float32)
            candidates = rng.standard_normal((n_rows, self._candidate_width), dtype=np.float32)
            started_s = time.perf_counter()
            try:
                raw = self._session.run(self._output_names, {self._user_input: user, self._candidate_input: candidates})
            except Exception as exc:  # ORT's pybind11 exceptions share no base but Exception.
                raise BundleInvalid(
                    f"dense.onnx of version {self.manifest.version} fails on {n_rows} candidates: {exc}"
                ) from exc
            elapsed_ms = (time.perf_counter() - started_s) * 1000
            for name, output in zip(self._output_names, raw, strict=True):
                values = np.asarray(output)
                if values.size != n_rows:
                    raise BundleInvalid(
                        f"output {name!r} has shape {values.shape} for {n_rows} candidates; "
                        f"a head must give [N] or [N, 1]"
                    )
                if not np.all(np.isfinite(values)):
                    raise BundleInvalid(
                        f"output {name!r} of version {self.manifest.version} is NaN or infinite "
                        f"for random inputs ({n_rows} candidates)"
                    )
            logger.info("warm-up of version %s: %d candidates in %.2f ms", self.manifest.version, n_rows, elapsed_ms)

    def run(self, user: FloatArray, candidates: FloatArray) -> dict[str, FloatArray]:
        """Head name -> float32 [N] probabilities for a (1, user_width) user row and (N, candidate_width) rows."""
        if user.dtype != np.float32 or user.shape != (1, self._user_width):
            raise ValueError(f"user must be float32 of shape (1, {self._user_width}), got {user.dtype} {user.shape}")
        if candidates.dtype != np.float32 or candidates.ndim != 2 or candidates.shape[1] != self._candidate_width:
            raise ValueError(
                f"candidates must be float32 of shape (N, {self._candidate_width}), "
                f"got {candidates.dtype} {candidates.shape}"
            )
        n_rows = candidates.shape[0]
        if n_rows == 0:
            return {name: np.empty(0, dtype=np.float32) for name in self._head_names}
        raw = self._session.run(
            self._output_names,
            {
                self._user_input: np.ascontiguousarray(user),
                self._candidate_input: np.ascontiguousarray(candidates),
            },
        )
        return {
            name: np.asarray(output, dtype=np.float32).reshape(n_rows)
            for name, output in zip(self._head_names, raw, strict=True)
        }


def _load_error(bundle: Bundle, exc: Exception) -> BundleInvalid:
    text = str(exc)
    if "external data" in text.lower():
        return BundleInvalid(
            f"dense.onnx of version {bundle.manifest.version} stores weights in external data files, which a "
            f"bundle cannot carry; export with all weights inside dense.onnx ({text})"
        )
    return BundleInvalid(f"dense.onnx of version {bundle.manifest.version} cannot be loaded: {text}")


def _static(dim: object) -> int | None:
    """A shape entry as an int if it is fixed, None if it is symbolic or unknown."""
    return dim if isinstance(dim, int) else None


def _check_inputs(session: ort.InferenceSession, manifest: Manifest) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    expected = {manifest.user_input, manifest.candidate_input}
    if set(inputs) != expected:
        raise BundleInvalid(f"dense.onnx inputs are {sorted(inputs)}, the manifest declares {sorted(expected)}")
    for name, rows, width in (
        (manifest.user_input, 1, manifest.user_width),
        (manifest.candidate_input, None, manifest.candidate_width),
    ):
        node = inputs[name]
        if node.type != _FLOAT_TENSOR:
            raise BundleInvalid(f"dense.onnx input {name!r} is {node.type}, the contract is float32")
        shape = list(node.shape)
        if len(shape) != 2:
            raise BundleInvalid(f"dense.onnx input {name!r} has shape {shape}, the contract is 2-D")
        n_rows, n_cols = _static(shape[0]), _static(shape[1])
        if rows is None and n_rows is not None:
            raise BundleInvalid(f"dense.onnx input {name!r} has a fixed batch of {n_rows}; it must be dynamic")
        if rows is not None and n_rows not in (None, rows):
            raise BundleInvalid(f"dense.onnx input {name!r} has {n_rows} rows, the contract is {rows}")
        if n_cols is not None and n_cols != width:
            raise BundleInvalid(f"dense.onnx input {name!r} is {n_cols} wide, the manifest's features make it {width}")


def _check_outputs(session: ort.InferenceSession, manifest: Manifest) -> None:
    outputs = {o.name: o for o in session.get_outputs()}
    for head in manifest.heads:
        node = outputs.get(head.output)
        if node is None:
            raise BundleInvalid(
                f"head {head.name!r} reads output {head.output!r}, which dense.onnx lacks (it has {sorted(outputs)})"
            )
        if node.type != _FLOAT_TENSOR:
            raise BundleInvalid(f"dense.onnx output {head.output!r} is {node.type}, a head must be float32")
        shape = list(node.shape)
        if not 1 <= len(shape) <= 2 or (len(shape) == 2 and _static(shape[1]) not in (None, 1)):
            raise BundleInvalid(f"dense.onnx output {head.output!r} has shape {shape}; a head gives [N] or [N, 1]")
