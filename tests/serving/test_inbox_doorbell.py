"""A server whose writer cannot have the inbox doorbell (store/doorbell.py) still applies every delta: it polls."""

from __future__ import annotations

from pathlib import Path

from liverank.store.doorbell import Doorbell, doorbell_address
from tests.serving.conftest import ADMIN, LiveServer, delta_json, manifest_of, rank_body, settings_for


def test_deltas_still_apply_when_the_writer_cannot_have_the_bell(tmp_path: Path, tiny_bundle: Path) -> None:
    """Another process holds the bell (or it is lost): the writer falls back to polling, nothing is lost."""
    data_dir = tmp_path / "data"
    squatter = Doorbell.bind(doorbell_address(data_dir / "store"))
    assert squatter is not None
    live = LiveServer(settings_for(data_dir, tiny_bundle)).start()
    try:
        manifest = manifest_of(live)
        slot = manifest.slots[0]
        with live.client() as client:
            for seq in (1, 2, 3):
                body = delta_json(manifest.schema_hash, seq, slot.name, [seq], [[float(seq)] * slot.dim])
                answer = client.post("/admin/deltas?wait=visible", content=body, headers=ADMIN)
                assert answer.status_code == 200, answer.text
            assert client.get("/admin/status", headers=ADMIN).json()["applied_seq"] == {"trainer": 3}
            ranked = client.post("/v1/rank", json=rank_body())
            assert ranked.status_code == 200
            assert ranked.json()["epoch"]["sparse_seq"] == {"trainer": 3}
    finally:
        live.stop()
        squatter.close()
