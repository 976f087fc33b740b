"""A bundle of another schema goes live in the server; the writer process must accept that schema's deltas.

(It did not: the writer's store kept the slots and schema it opened with, so every delta of the new schema waited
"for a bundle of its schema" forever.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverank.exporter.archive import archive_bundle
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.store import SlotDelta, SparseDelta, encode_delta
from tests.serving.conftest import ADMIN, DIM, LiveServer, settings_for


def test_deltas_of_a_new_schema_apply_after_its_bundle_goes_live(tmp_path: Path, tiny_bundle: Path) -> None:
    other = build_synthetic_bundle(tmp_path / "w500", preset="w500", dim=DIM, version="2")
    server = LiveServer(settings_for(tmp_path / "data", tiny_bundle, wait_visible_timeout_s=20)).start()
    try:
        with server.client() as client:
            uploaded = client.post("/admin/bundles", content=archive_bundle(tmp_path / "w500"), headers=ADMIN)
            assert uploaded.status_code == 200, uploaded.text
            ids = np.asarray([1, 2], dtype=np.uint64)
            slot = SlotDelta(ids, np.ones((2, DIM), np.float32), np.ones(2, np.int64))
            delta = encode_delta(SparseDelta("p", 1, other.schema_hash, 1, {"music_id": slot}))
            pushed = client.post("/admin/deltas?wait=visible", content=delta, headers=ADMIN)
            assert pushed.status_code == 200, pushed.text
            assert pushed.json()["epoch"] == {"dense_version": "2", "sparse_seq": {"p": 1}}
    finally:
        server.stop()
