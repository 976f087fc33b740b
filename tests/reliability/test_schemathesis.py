"""schemathesis against the server's own OpenAPI document (``/openapi.json``), every operation, live over HTTP.

Cases are generated from the document (schema-conforming and schema-violating ones), sent with a valid admin
token and without one, and each answer must be no 5xx and must conform to the document: a documented status, the
documented content type, a body matching the documented schema, documented headers, and a 4xx for data the
document says is invalid. Seeded (``derandomize``), so a run is repeatable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serving.conftest import ADMIN, LiveServer, settings_for

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
# Operations with a body or path parameters get up to this many cases each per mode and credentials (those without
# parameters one positive case each). Negative bodies exist only for /v1/rank, /admin/deltas and the OIP infer
# routes: any bytes are a valid bundle archive as far as the document can say.
EXAMPLES_PER_OPERATION = 120
NOT_NEGATABLE = {"POST /admin/bundles", "POST /admin/rollback"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, bundle_v1: Path) -> Iterator[LiveServer]:
    """The app in uvicorn on a thread of this process (tests/serving's harness): fast, and a 5xx shows here."""
    server = LiveServer(settings_for(tmp_path_factory.mktemp("schemathesis") / "data", bundle_v1)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def schema(live: LiveServer) -> Any:
    # Bundle archives are bytes on the wire, like application/octet-stream.
    schemathesis.serializer.alias(["application/gzip", "application/x-tar"], "application/octet-stream")
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def test_the_document_covers_every_route(schema: Any) -> None:
    labels = {op.label for op in _operations(schema)}
    assert labels == {
        "POST /v1/rank",
        "GET /v1/model",
        "POST /admin/deltas",
        "POST /admin/bundles",
        "POST /admin/rollback",
        "GET /admin/status",
        "GET /admin/checksum",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /status/data",
        "GET /v2",
        "GET /v2/health/live",
        "GET /v2/health/ready",
        "GET /v2/models/{name}",
        "GET /v2/models/{name}/versions/{model_version}",
        "GET /v2/models/{name}/ready",
        "GET /v2/models/{name}/versions/{model_version}/ready",
        "POST /v2/models/{name}/infer",
        "POST /v2/models/{name}/versions/{model_version}/infer",
    }


def _run_operation(
    operation: Any, mode: Any, url: str, headers: dict[str, str], statuses: Counter[int], failures: dict[str, str]
) -> None:
    """Generate, send and check one operation's cases; failures are collected (one per distinct kind), not raised."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        try:
            response = case.call(base_url=url, headers=headers, timeout=30)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (Exception, FailureGroup) as exc:
            titles = [getattr(e, "title", type(e).__name__) for e in getattr(exc, "exceptions", [exc])]
            failures.setdefault(f"{operation.label}: {', '.join(titles)}", str(exc)[:1500])

    try:
        run()
    except Unsatisfiable:
        # Nothing to negate: an operation without parameters, or with any bytes as its body.
        assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
        assert operation.method.upper() == "GET" or operation.label in NOT_NEGATABLE, operation.label


@pytest.mark.parametrize("credentials", ["token", "none"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_generated_requests_get_no_5xx_and_conforming_answers(
    live: LiveServer, schema: Any, credentials: str, mode: Any
) -> None:
    headers = dict(ADMIN) if credentials == "token" else {}
    statuses: Counter[int] = Counter()
    failures: dict[str, str] = {}  # distinct failures: "operation: title" -> the first report
    for operation in _operations(schema):
        _run_operation(operation, mode, live.url, headers, statuses, failures)
    total = sum(statuses.values())
    print(f"{mode.value}/{credentials}: {total} cases, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(f"{key}\n{report}" for key, report in failures.items())
    assert not [s for s in statuses if s >= 500], statuses
    with_body = 3 if mode == schemathesis.GenerationMode.POSITIVE else 2
    assert total >= with_body * EXAMPLES_PER_OPERATION
