"""What the client raises, under the project's one error tree (``LiverankError``).

A refusal by the server keeps the server's stable ``code`` (``unknown_feature``, ``sequence_gap``, ...), its HTTP
``status`` and its ``detail``, so that callers branch on the same codes the server documents.
"""

from __future__ import annotations

from liverank.errors import LiverankError


class ClientError(LiverankError):
    """Base of every error the client raises."""

    code = "client_error"


class ServerUnavailable(ClientError):
    """The server could not be reached, or kept answering 5xx/429, until the retries ran out."""

    code = "server_unavailable"


class ServerRejected(ClientError):
    """The server refused a request for good (4xx, 507): sending it again cannot help. ``code`` is the server's."""

    def __init__(self, status: int, code: str, detail: str, what: str = "request") -> None:
        super().__init__(f"{what} rejected ({status} {code}): {detail}")
        self.status, self.code, self.detail = status, code, detail


class DeltaRejected(ServerRejected):
    """The server refused a delta (invalid, wrong schema, not authorised)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(status, code, detail, "delta")


class BundleRejected(ServerRejected):
    """The server refused a bundle; the live model is unchanged."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(status, code, detail, "bundle")


class GapUnrecoverable(ClientError):
    """The server expects a sequence this client no longer holds; send a full snapshot from ``expected``."""

    code = "gap_unrecoverable"

    def __init__(self, producer: str, expected: int) -> None:
        super().__init__(f"server expects {producer!r} sequence {expected}, which is no longer in the resend window")
        self.producer, self.expected = producer, expected
