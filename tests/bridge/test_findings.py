"""The hostile-tenant review of the bridge (issue 14): one test per finding, on the real broker, SeaweedFS, worker
and database (each bridge test runs on SQLite and on PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import aio_pika
import httpx
import pytest

from sdqueue.bridge._accounts import Accounts, UserExists
from sdqueue.bridge._db import open_database
from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.contracts import ImageInfo, SucceededEvent, Timings
from sdqueue.contracts.topology import EVENTS_EXCHANGE, event_routing_key
from tests.bridge.conftest import (
    LiveBridge,
    bridge_process,
    free_port,
    make_bridge_settings,
    png_bytes,
    running_app,
    sign_in,
)
from tests.bridge.test_jobs import TINY, assert_error, submit, wait

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

CHUNK = b"x" * 65536


class CountedBody:
    """A request body handed to the app chunk by chunk, counting how many chunks the app pulled."""

    def __init__(self, chunks: int, *, head: bytes = b"") -> None:
        self.chunks = chunks
        self.head = head
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head:
            yield self.head
        for _ in range(self.chunks):
            self.pulled += 1
            yield CHUNK


async def test_finding_1_a_job_id_stamped_in_the_future_is_answered_at_once(
    api: httpx.AsyncClient, alice: dict[str, str]
):
    future_ids = [f"00000000000-{index}" for index in range(20)]

    async with asyncio.timeout(10):  # the old bridge polled the bucket until the id's time (the year 2527)
        answers = await asyncio.gather(*(api.get(f"/v1/jobs/{job_id}", headers=alice) for job_id in future_ids))
        history = await api.get("/v1/jobs", headers=alice)

    for answer in answers:
        assert_error(answer, 404, "not_found")
    assert history.status_code == 200


async def test_finding_1_shutdown_is_bounded_with_streams_open(
    bridge_settings: Settings, parked_model: str, tmp_path: Path
):
    settings = bridge_settings.model_copy(
        update={"bridge": bridge_settings.bridge.model_copy(update={"port": free_port(), "shutdown_timeout_s": 2.0})}
    )
    with bridge_process(settings, log_path=tmp_path / "bridge.log") as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            headers = await sign_in(http, "alice")
            job = await http.post("/v1/txt2img", json={"prompt": "x", **TINY, "model": parked_model}, headers=headers)
            assert job.status_code == 202, job.text
            async with http.stream("GET", f"/v1/jobs/{job.json()['job_id']}/events", headers=headers) as stream:
                assert stream.status_code == 200
                started = time.monotonic()
                os.kill(live.pid, signal.SIGTERM)
                code = await asyncio.to_thread(live.process.wait, 20.0)
        log = live.log_path.read_text(errors="replace")
        # uvicorn ends by re-raising the signal it handled: killed by SIGTERM, after its shutdown.
        assert code in {0, -signal.SIGTERM}, log[-2000:]
        assert "Application shutdown complete" in log
        assert time.monotonic() - started < 15


async def test_finding_2_an_unauthenticated_upload_is_refused_before_its_body_is_read(api: httpx.AsyncClient):
    boundary = "sdqueueboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body = CountedBody(200, head=head)  # 12.5 MiB, never announced: the bridge can only count what it pulls

    response = await api.post(
        "/v1/img2img", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )

    assert_error(response, 401, "unauthenticated")
    assert body.pulled <= 1, f"the bridge read {body.pulled} chunks of an unauthenticated body"


async def test_finding_2_an_authenticated_upload_is_cut_at_its_cap(
    api: httpx.AsyncClient, alice: dict[str, str], bridge_settings: Settings
):
    boundary = "sdqueueboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body = CountedBody(200, head=head)

    response = await api.post(
        "/v1/img2img", content=body, headers={**alice, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    )

    assert_error(response, 413, "image_too_large")
    cap_chunks = (bridge_settings.bridge.max_upload_bytes + 64 * 1024) // len(CHUNK) + 2
    assert body.pulled <= cap_chunks, f"the bridge read {body.pulled} chunks, its cap is {cap_chunks}"


async def test_finding_2_a_declared_length_over_the_cap_is_refused_unread(api: httpx.AsyncClient):
    body = CountedBody(4)
    headers = {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(200 * 1024 * 1024)}

    response = await api.post("/v1/img2img", content=body, headers=headers)

    assert_error(response, 413, "image_too_large")
    assert body.pulled == 0


async def test_finding_3_an_oversized_json_body_is_cut_at_its_cap(
    api: httpx.AsyncClient, alice: dict[str, str], bridge_settings: Settings
):
    body = CountedBody(200, head=b'{"prompt": "')

    response = await api.post("/v1/txt2img", content=body, headers={**alice, "Content-Type": "application/json"})

    assert_error(response, 413, "request_too_large")
    assert body.pulled <= bridge_settings.bridge.max_body_bytes // len(CHUNK) + 2


async def test_finding_4_a_bridge_killed_after_its_202_loses_nothing(
    bridge_settings: Settings, client: SdqueueClient, tmp_path: Path
):
    settings = bridge_settings.model_copy(
        update={"bridge": bridge_settings.bridge.model_copy(update={"port": free_port()})}
    )
    with bridge_process(settings, log_path=tmp_path / "first.log") as first:
        async with httpx.AsyncClient(base_url=first.url, timeout=30) as http:
            headers = await sign_in(http, "alice")
            accepted = await http.post("/v1/txt2img", json={"prompt": "kill -9 me", **TINY}, headers=headers)
            os.kill(first.pid, signal.SIGKILL)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]

    with bridge_process(settings, log_path=tmp_path / "second.log") as second:
        async with httpx.AsyncClient(base_url=second.url, timeout=90) as http:
            headers = await sign_in(http, "alice")
            done = (await http.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 60}, headers=headers)).json()
            history = (await http.get("/v1/jobs", headers=headers)).json()["jobs"]

    assert done["status"] == "succeeded", done
    assert done["prompt"] == "kill -9 me"
    assert job_id in [job["job_id"] for job in history]


async def test_finding_5_concurrent_sign_ups_on_two_processes_are_all_saved(
    stack_settings: Settings, client: SdqueueClient, postgres_bridge_url: str, tmp_path: Path
):
    base = make_bridge_settings(stack_settings, database_url=postgres_bridge_url, allow_signup=True)
    bridge = base.bridge.model_copy(update={"signups_per_address": 1000})
    first = base.model_copy(update={"bridge": bridge.model_copy(update={"port": free_port()})})
    second = base.model_copy(update={"bridge": bridge.model_copy(update={"port": free_port()})})
    names = [f"signup-{index}@example.com" for index in range(50)]
    with (
        bridge_process(first, log_path=tmp_path / "first.log") as one,
        bridge_process(second, log_path=tmp_path / "second.log") as two,
    ):
        async with httpx.AsyncClient(timeout=60) as http:
            created = await asyncio.gather(
                *(
                    http.post(
                        f"{(one, two)[index % 2].url}/registrar_usuario",
                        json={"correo": name, "contraseña": f"password-of-{name}"},
                    )
                    for index, name in enumerate(names)
                )
            )
            tokens = [
                await http.post(
                    f"{(two, one)[index % 2].url}/token", data={"username": name, "password": f"password-of-{name}"}
                )
                for index, name in enumerate(names)
            ]

    assert [response.status_code for response in created] == [201] * len(names)
    assert [response.status_code for response in tokens] == [200] * len(names)


async def test_finding_6_image_links_are_signed_on_every_read(bridge_settings: Settings, client: SdqueueClient):
    settings = bridge_settings.model_copy(update={"s3": bridge_settings.s3.model_copy(update={"url_ttl_s": 5})})
    async with running_app(settings) as http:
        headers = await sign_in(http, "alice")
        job_id = await submit(http, headers, seed=3)
        await wait(http, headers, job_id)
        await asyncio.sleep(1.1)  # the next signature is at least a second newer
        first = await http.get(f"/v1/jobs/{job_id}/images/0", headers=headers)
        await asyncio.sleep(1.1)
        second = await http.get(f"/v1/jobs/{job_id}/images/0", headers=headers)
        listed = (await http.get("/v1/jobs", headers=headers)).json()["jobs"][0]["result"]["images"][0]["url"]

    for url in (first.headers["location"], second.headers["location"], listed):
        query = parse_qs(urlsplit(url).query)
        assert query["X-Amz-Expires"] == ["5"], url  # the bridge's TTL, not the worker's at generation time
    assert _signed_at(first.headers["location"]) < _signed_at(second.headers["location"])
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(second.headers["location"])).content.startswith(b"\x89PNG")


def _signed_at(url: str) -> datetime:
    stamp = parse_qs(urlsplit(url).query)["X-Amz-Date"][0]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


async def test_finding_7_failed_sign_ins_are_throttled(
    stack_settings: Settings, client: SdqueueClient, database_url: str
):
    # A database of its own, with the default throttling: the session's allows a shared test address more.
    bridge_settings = make_bridge_settings(stack_settings, database_url=database_url)
    await _add_user(bridge_settings, database_url, "dave", "dave-password-1")
    async with running_app(bridge_settings) as http:
        answers = [await http.post("/token", data={"username": "dave", "password": "wrong"}) for _ in range(8)]
        right = await http.post("/token", data={"username": "dave", "password": "dave-password-1"})

    statuses = [answer.status_code for answer in answers]
    free = bridge_settings.bridge.sign_in_free_failures
    assert statuses[:free] == [401] * free
    assert 429 in statuses[free:], statuses
    throttled = next(answer for answer in answers if answer.status_code == 429)
    assert_error(throttled, 429, "too_many_requests")
    assert int(throttled.headers["retry-after"]) >= 1
    assert_error(right, 429, "too_many_requests")  # the right password does not get through a lockout at once


async def test_finding_8_a_removed_users_tokens_and_name_are_dead(bridge_settings: Settings, bridge_database_url: str):
    async with running_app(bridge_settings) as http:
        await _add_user(bridge_settings, bridge_database_url, "carol", "carol-password-1")
        headers = await sign_in(http, "carol", password="carol-password-1")
        job_id = await submit(http, headers, prompt="carol's private prompt")
        await _remove_user(bridge_settings, bridge_database_url, "carol")

        listed = await http.get("/v1/jobs", headers=headers)
        submitted = await http.post("/v1/txt2img", json={"prompt": "x", **TINY}, headers=headers)
        read = await http.get(f"/v1/jobs/{job_id}", headers=headers)
        with pytest.raises(UserExists):
            await _add_user(bridge_settings, bridge_database_url, "carol", "new-carol-password")

    for response in (listed, submitted, read):
        assert_error(response, 401, "invalid_token")


async def test_finding_9_a_forged_terminal_event_changes_nothing(
    api: httpx.AsyncClient, alice: dict[str, str], parked_model: str, bridge_settings: Settings
):
    job_id = await submit(api, alice, model=parked_model)
    forged = SucceededEvent(
        job_id=job_id,
        model=parked_model,
        worker="mallory",
        attempt=1,
        timings=Timings(),
        images=[
            ImageInfo(
                index=0,
                key=f"outputs/{job_id}/0.png",
                url="javascript:alert(document.domain)//",
                content_type="image/png",
                width=64,
                height=64,
                seed=1,
                sha256="0" * 64,
                size=1,
            )
        ],
    )
    await _publish_event(bridge_settings, forged.model_dump_json().encode(), event_routing_key(job_id, "succeeded"))
    await _publish_event(bridge_settings, b'{"type": "succeeded", "job_id": "' + job_id.encode() + b'"}', "job.x.y")

    status = (await api.get(f"/v1/jobs/{job_id}", headers=alice)).json()
    waited = (await api.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 2}, headers=alice)).json()
    image = await api.get(f"/v1/jobs/{job_id}/images/0", headers=alice)

    assert status["status"] == "queued", status
    assert waited["status"] == "queued", waited
    assert_error(image, 409, "conflict")
    assert "location" not in image.headers


async def test_finding_10_a_refused_img2img_stores_nothing(
    api: httpx.AsyncClient, alice: dict[str, str], s3_client: S3Client
):
    from tests.plugins.services import TEST_BUCKET

    def inputs() -> set[str]:
        listing = s3_client.list_objects_v2(Bucket=TEST_BUCKET, Prefix="inputs/")
        return {entry.get("Key", "") for entry in listing.get("Contents", [])}

    before = inputs()
    refused = []
    for fields in ({"width": "512", "height": "512"}, {"model": "no-such-model"}, {"steps": "0"}):
        refused.append(
            await api.post(
                "/v1/img2img",
                data={"prompt": "x", "width": "64", "height": "64", "steps": "2", **fields},
                files={"image": ("init.png", png_bytes(), "image/png")},
                headers=alice,
            )
        )

    assert [response.status_code for response in refused] == [422, 404, 400]
    assert inputs() == before


async def test_finding_11_the_page_and_every_answer_carry_security_headers(api: httpx.AsyncClient):
    page = await api.get("/")
    script = await api.get("/static/app.js")
    missing = await api.get("/no-such-route")

    for response in (page, script, missing):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
    assert "<script>" not in page.text
    assert script.status_code == 200
    assert "EventSource cannot" in script.text


async def test_finding_11_a_users_open_streams_are_capped(live_bridge: LiveBridge, parked_model: str):
    cap = live_bridge.settings.bridge.max_streams_per_user
    async with httpx.AsyncClient(base_url=live_bridge.url, timeout=30) as http:
        headers = await sign_in(http, "bob")
        job = await http.post("/v1/txt2img", json={"prompt": "x", **TINY, "model": parked_model}, headers=headers)
        events = f"/v1/jobs/{job.json()['job_id']}/events"
        streams = [http.stream("GET", events, headers=headers) for _ in range(cap)]
        opened = [await stream.__aenter__() for stream in streams]
        try:
            over_stream = await http.get(events, headers=headers)
            over_wait = await http.get(f"{events.removesuffix('/events')}/wait", headers=headers)
        finally:
            for stream in streams:
                await stream.__aexit__(None, None, None)
        await asyncio.sleep(0.5)
        after = await http.get(f"{events.removesuffix('/events')}/wait", params={"timeout": 0}, headers=headers)

    assert [response.status_code for response in opened] == [200] * cap
    assert_error(over_stream, 429, "too_many_requests")
    assert_error(over_wait, 429, "too_many_requests")
    assert after.status_code == 200, after.text  # closing the streams gave the slots back


async def _add_user(settings: Settings, url: str, name: str, password: str) -> None:
    database = await open_database(url)
    accounts = Accounts(database, bridge=settings.bridge)
    try:
        await accounts.add(name, password)
    finally:
        accounts.close()
        await database.close()


async def _remove_user(settings: Settings, url: str, name: str) -> None:
    database = await open_database(url)
    accounts = Accounts(database, bridge=settings.bridge)
    try:
        await accounts.remove(name)
    finally:
        accounts.close()
        await database.close()


async def _publish_event(settings: Settings, body: bytes, routing_key: str) -> None:
    connection = await aio_pika.connect(settings.broker.url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
        await exchange.publish(aio_pika.Message(body, content_type="application/json"), routing_key=routing_key)
    await asyncio.sleep(0.5)  # the bridge's hub has seen it by now


def test_no_route_but_sign_in_declares_a_body_that_fastapi_would_read_before_authentication():
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    from sdqueue.bridge import _compat, _ops, _routes

    def has_body(dependant: Dependant) -> bool:
        return bool(dependant.body_params) or any(has_body(inner) for inner in dependant.dependencies)

    routes = [route for router in (_routes.router, _compat.router, _ops.router) for route in router.routes]
    with_body = sorted(route.path for route in routes if isinstance(route, APIRoute) and has_body(route.dependant))

    assert len(routes) > 10
    assert with_body == ["/token"]  # the password form is the sign-in itself
