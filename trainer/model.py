"""The dense tower: DeepFM with a shared bottom and one logit per task head.

``forward(user, candidates)`` follows the bundle's ONNX contract (``liverank.store.manifest``): ``user`` is
[1, user_width]
(broadcast to every candidate) or [B, user_width] (one user per row, as in training), ``candidates`` is
[B, candidate_width]; it returns one probability vector [B] per head, in manifest head order. Inside:

    x      = concat(user rows, candidates)                  [B, fields * dim]
    deep   = MLP(x) (ReLU)                                  the shared bottom
    fm     = 1/2 * sum_d((sum_f e_fd)^2 - sum_f e_fd^2)     DeepFM's second-order term over the fields
    logit  = head_h(deep) + wide_h(x) + fm_scale_h * fm     per head h
    p_h    = sigmoid(logit_h)

Every field is an embedding of one shared dim (the second-order term reshapes x to [B, fields, dim]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from liverank.store.manifest import Manifest

DEFAULT_HIDDEN: tuple[int, ...] = (64, 32)


class DenseTower(nn.Module):
    """The dense half of the model; the embedding rows it reads live in ``liverank.trainer.tables``."""

    def __init__(
        self,
        user_fields: int,
        candidate_fields: int,
        dim: int,
        *,
        n_heads: int,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
    ) -> None:
        super().__init__()
        if user_fields < 0 or candidate_fields < 1 or dim < 1 or n_heads < 1 or any(h < 1 for h in hidden):
            raise ValueError("need candidate_fields, dim, n_heads and every hidden size >= 1")
        self.user_width = user_fields * dim
        self.candidate_width = candidate_fields * dim
        self.n_fields = user_fields + candidate_fields
        self.dim = dim
        self.n_heads = n_heads
        layers: list[nn.Module] = []
        width = self.user_width + self.candidate_width
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.bottom = nn.Sequential(*layers)
        self.heads = nn.Linear(width, n_heads)
        self.wide = nn.Linear(self.user_width + self.candidate_width, n_heads, bias=False)
        self.fm_scale = nn.Parameter(torch.ones(n_heads))

    @classmethod
    def from_manifest(cls, manifest: Manifest, *, hidden: Sequence[int] = DEFAULT_HIDDEN) -> DenseTower:
        """A tower whose inputs and heads match ``manifest``."""
        if any(f.kind == "numeric" for f in manifest.features):
            raise ValueError("the DeepFM tower takes embedding features only (no numeric features)")
        dims = {manifest.feature_width(f) for f in manifest.features}
        if len(dims) != 1:
            raise ValueError(f"every feature must share one embedding dim, got {sorted(dims)}")
        return cls(
            len(manifest.user_features),
            len(manifest.candidate_features),
            dims.pop(),
            n_heads=len(manifest.heads),
            hidden=hidden,
        )

    def logits(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Per-head logits [B, n_heads]; training uses these (BCE with logits is stabler than on probabilities)."""
        # expand is a no-op for a [B, user_width] user and a broadcast for [1, user_width]; it exports as Expand.
        x = torch.cat([user.expand(candidates.shape[0], -1), candidates], dim=1)
        fields = x.reshape(-1, self.n_fields, self.dim)
        summed = fields.sum(dim=1)
        fm = 0.5 * (summed * summed - (fields * fields).sum(dim=1)).sum(dim=1, keepdim=True)
        out: torch.Tensor = self.heads(self.bottom(x)) + self.wide(x) + fm * self.fm_scale
        return out

    def forward(self, user: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        probabilities = torch.sigmoid(self.logits(user, candidates))
        return tuple(probabilities[:, h] for h in range(self.n_heads))
