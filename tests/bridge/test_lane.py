"""The accept lane: what it serves answers as FastAPI's routing would, and everything else still goes to FastAPI."""

from __future__ import annotations

import re
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response

from sdqueue.bridge._errors import NOT_FOUND, BridgeError, install_error_handlers
from sdqueue.bridge._lane import AcceptLane, lane_routes
from sdqueue.client import BrokerUnavailable
from tests.bridge.test_jobs import TINY, assert_error


def _counted(metrics: str, *, route: str, status: int) -> float:
    """`sdqueue_bridge_requests_total` for one POST route and status (0 when absent)."""
    pattern = rf'sdqueue_bridge_requests_total\{{method="POST",route="{re.escape(route)}",status="{status}"\}} (\S+)'
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


async def test_lane_answers_are_counted_under_their_route(api: httpx.AsyncClient, alice: dict[str, str]):
    before = (await api.get("/metrics")).text
    accepted = await api.post("/v1/txt2img", json={"prompt": "a pear", **TINY}, headers=alice)
    refused = await api.post("/v1/txt2img", json={"prompt": "a pear", **TINY})
    after = (await api.get("/metrics")).text

    assert accepted.status_code == 202
    assert_error(refused, 401, "unauthenticated")
    for status in (202, 401):
        counted = _counted(after, route="/v1/txt2img", status=status) - _counted(
            before, route="/v1/txt2img", status=status
        )
        assert counted == 1, f"status {status} counted {counted} times"


async def test_other_methods_and_paths_still_go_through_fastapi(api: httpx.AsyncClient, alice: dict[str, str]):
    assert_error(await api.get("/v1/txt2img", headers=alice), 405, "method_not_allowed")
    assert_error(await api.post("/v1/txt2img/extra", json={}, headers=alice), 404, "not_found")


def _lane_app(endpoint: object) -> FastAPI:
    """A small app whose one route, `POST /go`, is served by the lane (the bridge's error handlers installed)."""
    router = APIRouter()
    router.add_api_route("/go", endpoint, methods=["POST"])  # type: ignore[arg-type]
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(AcceptLane, routes=lane_routes(router, paths=["/go"]))
    return app


async def _post_go(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://lane") as http:
        return await http.post("/go")


async def test_lane_answers_errors_with_the_apps_handlers():
    async def refuses(request: Request) -> Response:
        raise BridgeError(NOT_FOUND, "no such thing")

    async def queue_down(request: Request) -> Response:
        raise BrokerUnavailable("the broker is down")

    assert_error(await _post_go(_lane_app(refuses)), 404, "not_found")
    assert_error(await _post_go(_lane_app(queue_down)), 503, "unavailable")


async def test_an_unexpected_error_in_the_lane_is_a_plain_500():
    async def breaks(request: Request) -> Response:
        raise RuntimeError("a bug")

    response = await _post_go(_lane_app(breaks))

    assert response.status_code == 500
    assert "a bug" not in response.text


def test_lane_refuses_a_route_that_needs_fastapi_to_solve_its_parameters():
    async def caller() -> str:
        return "alice"

    async def with_dependency(request: Request, user: Annotated[str, Depends(caller)]) -> Response:
        return Response(user)

    router = APIRouter()
    router.add_api_route("/go", with_dependency, methods=["POST"])

    with pytest.raises(ValueError, match="/go"):
        lane_routes(router, paths=["/go"])
