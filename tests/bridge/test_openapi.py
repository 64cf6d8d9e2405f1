"""schemathesis explores the bridge's OpenAPI over real HTTP with a valid token: no 5xx, no schema violations."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks as st_checks
from schemathesis.core.result import Ok

from tests.bridge.conftest import PASSWORDS, LiveBridge

CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
]


@pytest.fixture(scope="session")
def bridge_schema(live_bridge: LiveBridge) -> schemathesis.BaseSchema:
    """The live bridge's OpenAPI document."""
    return schemathesis.openapi.from_url(f"{live_bridge.url}/openapi.json")


@pytest.fixture(scope="session")
def live_token(live_bridge: LiveBridge) -> str:
    """alice's bearer token from the live bridge."""
    response = httpx.post(f"{live_bridge.url}/token", data={"username": "alice", "password": PASSWORDS["alice"]})
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


MAX_EXAMPLES = 10


def test_openapi_conformance(bridge_schema: schemathesis.BaseSchema, live_bridge: LiveBridge, live_token: str):
    headers = {"Authorization": f"Bearer {live_token}"}
    results = list(bridge_schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results) >= 15, "every operation in the document must load"

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def explore(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(base_url=live_bridge.url, headers=headers, checks=CHECKS, timeout=70)

        explore()
    assert _answered(live_bridge) >= len(operations) * 3, "schemathesis sent too few requests to mean anything"


def _answered(live_bridge: LiveBridge) -> float:
    """Requests the live bridge has answered, from its own metrics."""
    text = httpx.get(f"{live_bridge.url}/metrics").text
    samples = [line for line in text.splitlines() if line.startswith("sdqueue_bridge_requests_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in samples)


def test_routes_that_read_their_own_body_still_document_it(bridge_schema: schemathesis.BaseSchema):
    document = httpx.get(bridge_schema.location or "").json()
    txt2img = document["paths"]["/v1/txt2img"]["post"]
    texto = document["paths"]["/generar-imagen-texto"]["post"]

    body = txt2img["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["prompt"]
    assert body["additionalProperties"] is False
    assert txt2img["security"] == [{"OAuth2PasswordBearer": []}]
    assert txt2img["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobAccepted"
    }
    assert texto["requestBody"]["content"]["application/json"]["schema"]["required"] == ["texto"]
