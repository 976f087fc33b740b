"""The tower inputs and labels of the last training events: the held-out rows an export measures parity on.

An int8 export compares its scores with the fp32 graph's on rows like the ones it will serve; the trainer's most
recent batches are the closest at hand (user and candidate rows as the tower saw them, with the events' labels,
so the report can give an AUC difference). A bounded window: memory stays flat however long the trainer runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import numpy as np
import torch

from liverank.exporter.parity import ParityRows
from liverank.trainer.events import F32Array

DEFAULT_CAPACITY_ROWS = 2048


class RecentRows:
    """A window of the last ``capacity_rows`` training rows (older batches drop out whole)."""

    def __init__(self, capacity_rows: int = DEFAULT_CAPACITY_ROWS) -> None:
        self.capacity_rows = capacity_rows
        self._batches: deque[tuple[F32Array, F32Array, dict[str, F32Array]]] = deque()
        self._rows = 0

    def add(self, user: torch.Tensor, candidates: torch.Tensor, labels: Mapping[str, F32Array]) -> None:
        n = candidates.shape[0]
        users = user.detach().numpy().astype(np.float32, copy=True)
        if users.shape[0] != n:  # a [1, width] user row broadcast to the batch
            users = np.repeat(users, n, axis=0)
        self._batches.append(
            (
                users,
                candidates.detach().numpy().astype(np.float32, copy=True),
                {name: np.asarray(v, dtype=np.float32).copy() for name, v in labels.items()},
            )
        )
        self._rows += n
        while len(self._batches) > 1 and self._rows - len(self._batches[0][1]) >= self.capacity_rows:
            self._rows -= len(self._batches.popleft()[1])

    def rows(self) -> ParityRows | None:
        """The window as parity rows, newest last (None before the first batch)."""
        if not self._batches:
            return None
        users, candidates, labels = zip(*self._batches, strict=True)
        names = labels[0].keys()
        return ParityRows(
            users=np.concatenate(users)[-self.capacity_rows :],
            candidates=np.concatenate(candidates)[-self.capacity_rows :],
            labels={name: np.concatenate([b[name] for b in labels])[-self.capacity_rows :] for name in names},
        )
