"""The DeepFM tower: the ONNX contract's shapes, user broadcasting, the second-order term, manifest checks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from liverank.store.manifest import Feature, Head, build_manifest  # noqa: E402
from liverank.store.slots import SlotConfig  # noqa: E402
from liverank.trainer.features import short_video_manifest  # noqa: E402
from liverank.trainer.model import DenseTower  # noqa: E402


def _tower(dim: int = 8) -> DenseTower:
    torch.manual_seed(0)
    return DenseTower.from_manifest(short_video_manifest(dim, created_at_ms=0), hidden=(16, 8))


def test_widths_and_heads_follow_the_manifest() -> None:
    manifest = short_video_manifest(16, created_at_ms=0)
    tower = DenseTower.from_manifest(manifest)
    assert tower.user_width == manifest.user_width == 32
    assert tower.candidate_width == manifest.candidate_width == 48
    assert tower.n_heads == len(manifest.heads) == 2


@pytest.mark.parametrize("n", [1, 500])
def test_a_one_row_user_is_broadcast_to_every_candidate(n: int) -> None:
    tower = _tower()
    user = 0.1 * torch.randn(1, tower.user_width)  # embedding-sized inputs: the FM term does not saturate
    candidates = 0.1 * torch.randn(n, tower.candidate_width)
    with torch.no_grad():
        broadcast = tower(user, candidates)
        per_row = tower(user.expand(n, -1).clone(), candidates)
    assert len(broadcast) == 2
    for p, q in zip(broadcast, per_row, strict=True):
        assert p.shape == (n,)
        assert p.dtype == torch.float32
        assert bool(((p > 0) & (p < 1)).all())
        torch.testing.assert_close(p, q)


def test_rows_are_scored_independently() -> None:
    tower = _tower()
    user = torch.randn(1, tower.user_width)
    candidates = torch.randn(20, tower.candidate_width)
    with torch.no_grad():
        together = tower(user, candidates)[0]
        alone = torch.cat([tower(user, candidates[i : i + 1])[0] for i in range(20)])
    torch.testing.assert_close(together, alone)


def test_logits_are_deep_plus_wide_plus_the_second_order_term() -> None:
    tower = _tower(dim=4)
    user = torch.randn(3, tower.user_width)
    candidates = torch.randn(3, tower.candidate_width)
    x = torch.cat([user, candidates], dim=1)
    fields = x.reshape(3, tower.n_fields, tower.dim)
    pairwise = torch.zeros(3)
    for i in range(tower.n_fields):
        for j in range(i + 1, tower.n_fields):
            pairwise += (fields[:, i] * fields[:, j]).sum(dim=1)
    with torch.no_grad():
        expected = tower.heads(tower.bottom(x)) + tower.wide(x) + pairwise[:, None] * tower.fm_scale
        torch.testing.assert_close(tower.logits(user, candidates), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.stack(tower(user, candidates), dim=1), torch.sigmoid(expected))


def test_gradients_reach_both_inputs() -> None:
    tower = _tower()
    user = torch.randn(1, tower.user_width, requires_grad=True)
    candidates = torch.randn(5, tower.candidate_width, requires_grad=True)
    torch.stack(tower(user, candidates)).sum().backward()
    assert user.grad is not None
    assert candidates.grad is not None
    assert bool(user.grad.abs().sum() > 0)
    assert bool(candidates.grad.abs().sum() > 0)


def test_the_tower_needs_embedding_fields_of_one_dim() -> None:
    heads = [Head("click", "p_click", 1.0)]
    mixed = build_manifest(
        model="m",
        version="1",
        slots=[SlotConfig("a", 8), SlotConfig("b", 4)],
        features=[Feature("a", "user", "id", "a"), Feature("b", "candidate", "id", "b")],
        heads=heads,
        created_at_ms=0,
    )
    with pytest.raises(ValueError, match="one embedding dim"):
        DenseTower.from_manifest(mixed)
    numeric = build_manifest(
        model="m",
        version="1",
        slots=[SlotConfig("b", 4)],
        features=[Feature("age", "user", "numeric"), Feature("b", "candidate", "id", "b")],
        heads=heads,
        created_at_ms=0,
    )
    with pytest.raises(ValueError, match="numeric"):
        DenseTower.from_manifest(numeric)
