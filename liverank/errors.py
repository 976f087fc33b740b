"""The root of liverank's exception tree.

Every error liverank raises on purpose is a ``LiverankError``: the store's (``StoreError``), the serving core's
(``ServingError``), the exporter's (``PushError``, ``ExportParityError``) and the trainer's (``DatasetUnavailable``).
Each carries a stable machine-readable ``code`` (a class-level default, the same across releases) and a ``message``
meant for the person who caused it. Nothing here knows how an error is shown: ``serving/api`` maps codes to HTTP
statuses, the ``liverank`` command (``liverank/cli.py``) maps them to one stderr line and an exit code.

This module imports nothing, so every package (the store included) may build on it.
"""

from __future__ import annotations


class LiverankError(Exception):
    """Base of every error liverank raises on purpose."""

    code: str = "liverank_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message: str = message
