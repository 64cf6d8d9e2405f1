"""`GET /v1/models`: the aliases live workers announce in their heartbeats, trusted only from workers' broker users."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import httpx
import pytest

from sdqueue.config import Settings
from sdqueue.contracts import WorkerHeartbeat, heartbeat_routing_key
from sdqueue.contracts.topology import EVENTS_EXCHANGE
from tests.bridge.conftest import running_app, sign_in
from tests.bridge.test_jobs import assert_error

# The session worker heartbeats every 10 s (the default): the bridge has heard it within three of them.
HEARD_WITHIN_S = 35.0


def heartbeat(worker: str, *, models: dict[str, str], interval_s: float = 30.0, **fields: Any) -> WorkerHeartbeat:
    """A heartbeat of a worker serving `models` (alias -> family), each with two schedulers."""
    return WorkerHeartbeat(
        worker=worker,
        state=fields.pop("state", "ready"),
        models=tuple(models),
        loaded=tuple(models),
        families=models,
        schedulers={alias: ("euler", "ddim") for alias in models},
        device="cpu",
        in_flight=0,
        interval_s=interval_s,
        **fields,
    )


async def send(settings: Settings, beat: WorkerHeartbeat, *, user_id: str | None) -> None:
    """Publish a heartbeat as the settings' broker user, claiming `user_id` (the broker checks it is that user)."""
    async with await aio_pika.connect(settings.broker.url.get_secret_value()) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
        message = aio_pika.Message(beat.model_dump_json().encode(), content_type="application/json", user_id=user_id)
        await exchange.publish(message, routing_key=heartbeat_routing_key(beat.worker))
    await asyncio.sleep(0.5)  # the bridge's hub has seen it by now


async def listed(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    response = await api.get("/v1/models", headers=headers)
    assert response.status_code == 200, response.text
    return {model["alias"]: model for model in response.json()["models"]}


async def test_the_session_workers_model_is_listed_with_its_family(api: httpx.AsyncClient, alice: dict[str, str]):
    deadline = time.monotonic() + HEARD_WITHIN_S
    models = await listed(api, alice)
    while "default" not in models and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        models = await listed(api, alice)

    assert models["default"]["family"] == "sd1"
    assert models["default"]["defaults"] == {"width": 512, "height": 512, "guidance_scale": 7.5}
    assert "pndm" in models["default"]["schedulers"]
    assert models["default"]["workers"] >= 1


async def test_an_sdxl_alias_shows_its_familys_defaults_until_its_worker_falls_silent(
    api: httpx.AsyncClient, alice: dict[str, str], bridge_settings: Settings
):
    user = bridge_settings.broker.user_name
    await send(bridge_settings, heartbeat("xl-1", models={"xl": "sdxl"}, interval_s=0.4), user_id=user)
    await send(bridge_settings, heartbeat("xl-2", models={"xl": "sdxl", "xl-b": "sdxl"}), user_id=user)

    models = await listed(api, alice)
    await asyncio.sleep(3 * 0.4)
    later = await listed(api, alice)
    await send(bridge_settings, heartbeat("xl-2", models={"xl": "sdxl"}, state="draining"), user_id=user)
    gone = await listed(api, alice)

    assert models["xl"]["family"] == "sdxl"
    assert models["xl"]["defaults"] == {"width": 1024, "height": 1024, "guidance_scale": 5.0}
    assert models["xl"]["schedulers"] == ["ddim", "euler"]
    assert models["xl"]["workers"] == 2
    assert later["xl"]["workers"] == 1  # xl-1 missed three of its intervals
    assert "xl" not in gone  # xl-2 is draining: it takes no new job
    assert "xl-b" not in gone


async def test_workers_that_disagree_on_a_family_show_none(
    api: httpx.AsyncClient, alice: dict[str, str], bridge_settings: Settings
):
    user = bridge_settings.broker.user_name
    await send(bridge_settings, heartbeat("mixed-1", models={"mixed": "sd1"}), user_id=user)
    await send(bridge_settings, heartbeat("mixed-2", models={"mixed": "sd2"}), user_id=user)

    mixed = (await listed(api, alice))["mixed"]

    assert (mixed["family"], mixed["defaults"], mixed["workers"]) == (None, None, 2)
    for name in ("mixed-1", "mixed-2"):
        await send(bridge_settings, heartbeat(name, models={"mixed": "sd1"}, state="draining"), user_id=user)


async def test_a_heartbeat_without_a_workers_user_id_is_ignored(
    api: httpx.AsyncClient, alice: dict[str, str], bridge_settings: Settings
):
    await send(bridge_settings, heartbeat("mallory", models={"forged": "sdxl"}), user_id=None)

    assert "forged" not in await listed(api, alice)


async def test_a_heartbeat_from_a_broker_user_that_is_not_a_worker_is_ignored(bridge_settings: Settings):
    user = bridge_settings.broker.user_name
    broker = bridge_settings.broker.model_copy(update={"worker_users": ("sdqueue-worker-only",)})
    async with running_app(bridge_settings.model_copy(update={"broker": broker})) as api:
        headers = await sign_in(api, "alice")
        await send(bridge_settings, heartbeat("mallory-2", models={"forged-2": "sd1"}), user_id=user)

        assert "forged-2" not in await listed(api, headers)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not.a.token"}])
async def test_the_model_list_needs_a_token(api: httpx.AsyncClient, headers: dict[str, str]):
    assert_error(
        await api.get("/v1/models", headers=headers), 401, "unauthenticated" if not headers else "invalid_token"
    )
