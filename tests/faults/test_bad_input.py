"""Hostile bodies and init images through the real worker: one failed event each, a record, sdqueue.dead, no crash.

Width over the pixel cap, unknown fields, odd widths and unknown schedulers are in tests/e2e/test_rejections.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import secrets
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from PIL import Image

from sdqueue.client import SdqueueClient, bearer, new_job_id
from sdqueue.config import Settings
from sdqueue.contracts import ErrorCode, GenerationRequest, SucceededEvent, parse_event
from sdqueue.contracts.topology import DELIVERY_COUNT_HEADER, EVENTS_EXCHANGE
from tests.e2e.requests import (
    body_with,
    claims,
    hs256,
    img2img,
    png_claiming,
    publish_without_message_id,
    raw_message,
    signed_message,
    txt2img,
)
from tests.faults import (
    QUIET_AFTER_S,
    assert_no_traceback_since,
    dead_letter_by_correlation_id,
    expect_rejection,
    log_size,
)
from tests.plugins.stack import BrokerProbe, WorkerProcess

GENERATION_TIMEOUT_S = 90.0
TEN_MB = 10 * 1024 * 1024
ONE_MB = 1024 * 1024
UNICODE_PROMPT = "🐶🎩 كلب يرتدي قبعة · כלב עם כובע 👨‍👩‍👧 — a dog"

BodyMaker = Callable[[GenerationRequest], bytes]
HIRES = {"scale": 2.0, "steps": 4}
INLINE_PNG = {"data": base64.b64encode(b"\x89PNG not decoded: the body is refused first").decode()}


@pytest_asyncio.fixture(scope="module")
async def broker(stack_settings: Settings, client: SdqueueClient) -> AsyncIterator[AbstractRobustConnection]:
    """A connection of this module's own, for looking at the broker where BrokerProbe cannot."""
    connection = await aio_pika.connect_robust(stack_settings.broker.url.get_secret_value())
    async with connection:
        yield connection


def _not_utf8(request: GenerationRequest) -> bytes:
    body = request.model_dump_json().encode()
    assert b"a dog" in body
    return body.replace(b"a dog", b"a \xff\xfe\xc3 dog")


def _lone_surrogate(request: GenerationRequest) -> bytes:
    # Valid JSON syntax that decodes to no Unicode text at all; it must never reach the PNG encoder.
    return body_with(request).replace(b"a dog", b"a \\ud83d dog")


@pytest.mark.parametrize(
    ("make_body", "code"),
    [
        pytest.param(lambda _: b"{this is not json", ErrorCode.INVALID_REQUEST, id="non-JSON body"),
        pytest.param(_not_utf8, ErrorCode.INVALID_REQUEST, id="non-UTF-8 body"),
        pytest.param(_lone_surrogate, ErrorCode.INVALID_REQUEST, id="lone surrogate escape"),
        pytest.param(lambda r: body_with(r, prompt="x" * TEN_MB), ErrorCode.LIMITS_EXCEEDED, id="10 MB body"),
        pytest.param(lambda r: body_with(r, schema_version=2), ErrorCode.INVALID_REQUEST, id="schema_version 2"),
        pytest.param(lambda r: body_with(r, height=10**6), ErrorCode.LIMITS_EXCEEDED, id="height 10^6"),
        pytest.param(lambda r: body_with(r, steps=10**6), ErrorCode.INVALID_REQUEST, id="steps 10^6"),
        pytest.param(lambda r: body_with(r, num_images=10**3), ErrorCode.INVALID_REQUEST, id="num_images 10^3"),
        pytest.param(lambda r: body_with(r, guidance_scale=float("nan")), ErrorCode.INVALID_REQUEST, id="NaN guidance"),
        pytest.param(
            lambda r: body_with(r, guidance_scale=float("inf")), ErrorCode.INVALID_REQUEST, id="Infinity guidance"
        ),
        pytest.param(lambda r: body_with(r, prompt="x" * ONE_MB), ErrorCode.INVALID_REQUEST, id="1 MB prompt"),
        pytest.param(lambda r: body_with(r, prompt=""), ErrorCode.INVALID_REQUEST, id="empty prompt"),
        pytest.param(lambda r: body_with(r, mode="img2img"), ErrorCode.INVALID_REQUEST, id="img2img without image"),
        pytest.param(
            lambda r: body_with(r, mode="inpaint", init_image=INLINE_PNG),
            ErrorCode.INVALID_REQUEST,
            id="inpaint without mask",
        ),
        pytest.param(lambda r: body_with(r, mask_image=INLINE_PNG), ErrorCode.INVALID_REQUEST, id="mask on txt2img"),
        pytest.param(lambda r: body_with(r, mask_blur=4), ErrorCode.INVALID_REQUEST, id="mask_blur on txt2img"),
        pytest.param(
            lambda r: body_with(r, mode="img2img", init_image=INLINE_PNG, hires=HIRES),
            ErrorCode.INVALID_REQUEST,
            id="hires on img2img",
        ),
        pytest.param(
            lambda r: body_with(r, width=512, height=512, hires={**HIRES, "scale": 2.5}),
            ErrorCode.LIMITS_EXCEEDED,
            id="hires final size over the pixel cap",
        ),
        pytest.param(
            lambda r: body_with(r, preview_interval_s=1.0),
            ErrorCode.INVALID_REQUEST,
            id="preview interval, no previews",
        ),
        pytest.param(
            lambda r: body_with(r, previews=True, preview_interval_s=0.1),
            ErrorCode.INVALID_REQUEST,
            id="preview interval under the worker's minimum",
        ),
        pytest.param(
            lambda r: body_with(r, previews=True, preview_interval_s=61.0),
            ErrorCode.INVALID_REQUEST,
            id="preview interval over 60 s",
        ),
    ],
)
async def test_bad_body_is_reported_recorded_and_dead_lettered(
    make_body: BodyMaker,
    code: ErrorCode,
    client: SdqueueClient,
    probe: BrokerProbe,
    worker: WorkerProcess,
    stack_settings: Settings,
):
    request = txt2img()
    body = make_body(request)

    rejection = await expect_rejection(
        signed_message(body, job_id=request.job_id, auth=stack_settings.auth),
        job_id=request.job_id,
        code=code,
        client=client,
        probe=probe,
        worker=worker,
    )

    assert rejection.types == ["failed"], "a body that does not validate must not start"
    assert await client.read_record(request.job_id) == rejection.event


def _inline(data: bytes) -> Callable[[], dict[str, str]]:
    return lambda: {"data": base64.b64encode(data).decode()}


@pytest.mark.parametrize(
    ("make_init_image", "code"),
    [
        pytest.param(_inline(png_claiming(50_000, 50_000)), ErrorCode.IMAGE_TOO_LARGE, id="decompression bomb PNG"),
        pytest.param(
            lambda: {"data": base64.b64encode(bytes(4 * 1024 * 1024 + 1)).decode()},
            ErrorCode.IMAGE_TOO_LARGE,
            id="inline image over 4 MiB",
        ),
        pytest.param(_inline(os.urandom(4096)), ErrorCode.INVALID_IMAGE, id="random bytes"),
        pytest.param(lambda: {"data": "iVBORw0KGgo***not base64!"}, ErrorCode.INVALID_IMAGE, id="malformed base64"),
        pytest.param(lambda: {"key": "inputs/{job}/absent.png"}, ErrorCode.INVALID_IMAGE, id="missing init key"),
    ],
)
async def test_bad_init_image_is_reported_recorded_and_dead_lettered(
    make_init_image: Callable[[], dict[str, str]],
    code: ErrorCode,
    client: SdqueueClient,
    probe: BrokerProbe,
    worker: WorkerProcess,
    stack_settings: Settings,
):
    init_image, job_id = make_init_image(), new_job_id()
    if "key" in init_image:
        init_image = {"key": init_image["key"].format(job=job_id)}  # the job's own input prefix
    request = img2img(init_image, job_id=job_id)
    body = request.model_dump_json().encode()

    rejection = await expect_rejection(
        signed_message(body, job_id=request.job_id, auth=stack_settings.auth),
        job_id=request.job_id,
        code=code,
        client=client,
        probe=probe,
        worker=worker,
    )

    assert rejection.types in (["failed"], ["started", "failed"]), "no progress: the image never reached the model"
    assert await client.read_record(request.job_id) == rejection.event


@pytest.mark.parametrize(
    ("prompt", "ensure_ascii"),
    [
        pytest.param(UNICODE_PROMPT, False, id="emoji and RTL as UTF-8"),
        pytest.param(UNICODE_PROMPT, True, id="emoji and RTL as \\u escapes"),
        pytest.param("a\x00dog\x07with\u202ea hat\ufeff", False, id="NUL, BEL, RLO and BOM"),
    ],
)
async def test_unusual_prompt_text_succeeds_and_is_embedded(
    prompt: str,
    ensure_ascii: bool,
    client: SdqueueClient,
    probe: BrokerProbe,
    stack_settings: Settings,
):
    request = txt2img(prompt=prompt)
    body = json.dumps(request.model_dump(mode="json"), ensure_ascii=ensure_ascii).encode()
    log = await probe.watch(request.job_id)

    await client.publish_raw(
        signed_message(body, job_id=request.job_id, auth=stack_settings.auth), routing_key="default"
    )
    await log.wait_for("succeeded", timeout_s=GENERATION_TIMEOUT_S)

    assert not log.of_type("failed"), log.events
    [event] = log.of_type("succeeded")
    assert isinstance(event, SucceededEvent)
    png = Image.open(io.BytesIO(await client.fetch_image(event.images[0])))
    assert prompt in png.info["parameters"]


@pytest.mark.parametrize("message_id", [None, "not a job id!"], ids=["no message_id", "message_id not a job id"])
async def test_job_id_of_a_valid_body_is_used_when_the_message_has_none(
    message_id: str | None,
    client: SdqueueClient,
    probe: BrokerProbe,
    worker: WorkerProcess,
    stack_settings: Settings,
):
    request = txt2img()
    body = request.model_dump_json().encode()
    token = hs256(claims(body, job_id=request.job_id, auth=stack_settings.auth), stack_settings.auth)
    log = await probe.watch(request.job_id)

    await _publish(body, message_id=message_id, authorization=bearer(token), client=client, settings=stack_settings)
    await log.wait_for("succeeded", timeout_s=GENERATION_TIMEOUT_S)

    assert not log.of_type("failed"), f"{log.events}\n{worker.log_tail()}"
    [event] = log.of_type("succeeded")
    assert event.job_id == request.job_id
    assert await client.read_record(request.job_id) == event


@pytest.mark.parametrize("message_id", [None, "../../etc/passwd"], ids=["no message_id", "message_id not a job id"])
async def test_message_with_no_usable_job_id_is_dead_lettered_silently(
    message_id: str | None,
    client: SdqueueClient,
    broker: AbstractRobustConnection,
    worker: WorkerProcess,
    stack_settings: Settings,
):
    body = b"\x00 neither JSON nor a job id"
    correlation_id = f"silent-{secrets.token_hex(8)}"
    log_offset = log_size(worker)
    seen: list[AbstractIncomingMessage] = []

    async def collect(event: AbstractIncomingMessage) -> None:
        seen.append(event)

    async with await broker.channel() as channel:
        every_event = await channel.declare_queue(exclusive=True, auto_delete=True)
        await every_event.bind(EVENTS_EXCHANGE, routing_key="job.#")  # every job event; heartbeats are not
        await every_event.consume(collect, no_ack=True)

        await _publish(
            body,
            message_id=message_id,
            correlation_id=correlation_id,
            authorization=None,
            client=client,
            settings=stack_settings,
        )
        dead = await dead_letter_by_correlation_id(broker, correlation_id)
        await asyncio.sleep(QUIET_AFTER_S)

    assert dead is not None, f"message never reached sdqueue.dead; worker log:\n{worker.log_tail()}"
    assert (dead.body, dead.message_id) == (body, message_id)
    assert [parse_event(event.body) for event in seen] == [], "no job id, so nobody to report to"
    assert worker.process.poll() is None
    assert_no_traceback_since(worker, log_offset)


async def _publish(
    body: bytes,
    *,
    message_id: str | None,
    authorization: str | None,
    client: SdqueueClient,
    settings: Settings,
    correlation_id: str | None = None,
) -> None:
    """Publish with exactly the `message_id` given; aio-pika would invent one where it is None."""
    correlation_id = correlation_id or secrets.token_hex(8)
    if message_id is None:
        await publish_without_message_id(
            settings.broker.url.get_secret_value(),
            body,
            routing_key="default",
            correlation_id=correlation_id,
            authorization=authorization,
        )
        return
    message = raw_message(body, job_id=message_id, authorization=authorization)
    message.correlation_id = correlation_id
    await client.publish_raw(message, routing_key="default")


@pytest.mark.parametrize(
    "forged_count",
    [
        pytest.param(-5, id="negative"),
        pytest.param(99, id="past the limit"),
        pytest.param("three", id="not a number"),
    ],
)
async def test_forged_delivery_count_header_is_not_trusted(
    forged_count: int | str,
    client: SdqueueClient,
    probe: BrokerProbe,
    worker: WorkerProcess,
    stack_settings: Settings,
):
    request = txt2img()
    message = signed_message(request.model_dump_json().encode(), job_id=request.job_id, auth=stack_settings.auth)
    message.headers[DELIVERY_COUNT_HEADER] = forged_count
    log_offset = log_size(worker)
    log = await probe.watch(request.job_id)

    await client.publish_raw(message, routing_key="default")
    await log.wait_for("succeeded", timeout_s=GENERATION_TIMEOUT_S)
    await asyncio.sleep(QUIET_AFTER_S)

    assert [event.type for event in log.events if event.type != "progress"] == ["started", "succeeded"]
    assert {event.attempt for event in log.events} == {1}, "a first delivery is attempt 1, whatever the headers say"
    assert_no_traceback_since(worker, log_offset)


async def test_worker_still_serves_after_the_battery(client: SdqueueClient, worker: WorkerProcess):
    event = await client.generate(txt2img(), timeout_s=GENERATION_TIMEOUT_S)

    assert event.images
    assert worker.process.poll() is None
