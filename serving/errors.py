"""The serving core's exception tree, drawn once.

Every error carries a stable machine-readable ``code`` and a message meant for the person who sent the bad
input. No HTTP status lives here: ``serving/api/`` owns the map from codes to statuses.
"""

from __future__ import annotations

from liverank.errors import LiverankError


class ServingError(LiverankError):
    """Base of every error the serving core raises on purpose."""

    code = "serving_error"


# --- model bundles: nothing was loaded, the live model is untouched ---------------------------------------


class BundleInvalid(ServingError):
    """A model bundle is malformed, inconsistent with its manifest, or produces unusable outputs."""

    code = "invalid_bundle"


class BundleArchiveUnsafe(BundleInvalid):
    """A bundle archive holds something other than two regular files at its top (links, paths, extras)."""

    code = "unsafe_archive"


class BundleTooLarge(BundleInvalid):
    """A bundle archive (or one of its files) is larger than the configured limit."""

    code = "bundle_too_large"


class BundleIncompatible(BundleInvalid):
    """A bundle's slots contradict the rows already stored (same slot name, other dim, dtype or id kind)."""

    code = "incompatible_bundle"


class BundleParityRefused(BundleInvalid):
    """A reduced-precision bundle's parity report is missing or outside the configured bounds."""

    code = "parity_refused"


class NoBundle(ServingError):
    """No model bundle is live yet: nothing can be ranked."""

    code = "no_bundle"


class NoPreviousBundle(ServingError):
    """Rollback asked for, but no earlier bundle is kept."""

    code = "no_previous_bundle"


# --- ranking requests: nothing was computed -------------------------------------------------------------------


class RequestInvalid(ServingError):
    """A ranking request does not fit the live model's features or the server's limits."""

    code = "invalid_request"


class InvalidJson(RequestInvalid):
    code = "invalid_json"


class UnknownFeature(RequestInvalid):
    code = "unknown_feature"


class MissingFeature(RequestInvalid):
    code = "missing_feature"


class WrongType(RequestInvalid):
    code = "wrong_type"


class RaggedColumns(RequestInvalid):
    code = "ragged_columns"


class EmptyCandidates(RequestInvalid):
    code = "empty_candidates"


class LimitExceeded(RequestInvalid):
    """A request is over a configured size limit (candidates, ids per list, k, body bytes)."""

    code = "limit_exceeded"


class UnknownHead(RequestInvalid):
    code = "unknown_head"


class InferenceRequestInvalid(RequestInvalid):
    """An Open Inference Protocol request is malformed or its tensors do not fit the live model's inputs."""

    code = "invalid_inference_request"


class ModelNotFound(ServingError):
    """An Open Inference Protocol request names a model (or version) this server does not serve."""

    code = "model_not_found"


class BodyTooLarge(ServingError):
    """A request body is larger than the endpoint accepts."""

    code = "body_too_large"


class WaitTimeout(ServingError):
    """``?wait=visible`` gave up: the delta is queued but was not applied in time."""

    code = "wait_timeout"


class ConfigInvalid(ServingError):
    """The server's settings cannot work (e.g. no admin token on a non-loopback address)."""

    code = "invalid_config"


class LogUnavailable(ServingError):
    """Replicated mode: the shared log did not acknowledge a push (no quorum, no connection); nothing was accepted."""

    code = "log_unavailable"


class RankingUnavailable(ServingError):
    """The server's count of rankings at once (``rank_slots``) is gone: the server is stopping or was restarted."""

    code = "ranking_unavailable"
