"""A hostile tenant against the real broker, SeaweedFS and worker: one test per finding of issue 15.

Each test is named for its finding and failed on the code before the fix.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from PIL import Image
from pydantic import SecretStr

from sdqueue.client import SdqueueClient, bearer, mint_token, request_body
from sdqueue.config import AuthSettings, Settings
from sdqueue.contracts import SCOPE_CANCEL, CancelCommand, CancelledEvent, ErrorCode, SucceededEvent
from sdqueue.contracts.topology import record_key
from tests.e2e.requests import (
    body_with,
    claims,
    hs256,
    img2img,
    raw_message,
    signed_message,
    txt2img,
)
from tests.faults import FAILED_TIMEOUT_S, QUIET_AFTER_S, expect_rejection, expect_unreported
from tests.plugins.isolated import IsolatedStack, free_port, updated
from tests.plugins.services import SeaweedStack
from tests.plugins.stack import BrokerProbe, WorkerProcess
from tests.plugins.webhook_receiver import documented_verify, receiving

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

GENERATION_TIMEOUT_S = 90.0
WRONG_SECRET = "another-secret-that-is-long-enough-for-hs256!"
# Big enough that one step of the tiny model takes seconds: a cancel can land between two checks of the budget.
SLOW_SIDE_PX = 1024


def _png(side_px: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side_px, side_px), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _unverified_cases(body: bytes, *, job_id: str, settings: Settings) -> dict[str, str | None]:
    auth = settings.auth
    good = claims(body, job_id=job_id, auth=auth)
    return {
        "no token": None,
        "garbage": "Bearer not-a-jwt",
        "wrong secret": bearer(jwt.encode(good, WRONG_SECRET, algorithm="HS256")),
        "unknown issuer": bearer(hs256(claims(body, job_id=job_id, auth=auth, iss="mallory"), auth)),
        "issued for another job": bearer(hs256(claims(body, job_id="another-job", auth=auth), auth)),
        "no subject": bearer(hs256(claims(body, job_id=job_id, auth=auth, sub=None), auth)),
    }


@pytest.mark.parametrize(
    "case", ["no token", "garbage", "wrong secret", "unknown issuer", "issued for another job", "no subject"]
)
async def test_finding_1_unverified_token_gets_no_event(
    case: str, client: SdqueueClient, probe: BrokerProbe, worker: WorkerProcess, stack_settings: Settings
):
    request = txt2img()
    body = request.model_dump_json().encode()
    authorization = _unverified_cases(body, job_id=request.job_id, settings=stack_settings)[case]

    await expect_unreported(
        raw_message(body, job_id=request.job_id, authorization=authorization),
        job_id=request.job_id,
        client=client,
        probe=probe,
        worker=worker,
    )

    assert await client.read_record(request.job_id) is None


async def test_finding_1_garbage_under_a_running_job_leaves_it_alone(
    client: SdqueueClient, probe: BrokerProbe, worker: WorkerProcess
):
    request = txt2img(width=256, height=256, steps=20)
    log = await probe.watch(request.job_id)
    await client.submit(request)
    await log.wait_for("started", timeout_s=GENERATION_TIMEOUT_S)

    body = txt2img(job_id=request.job_id).model_dump_json().encode()
    await client.publish_raw(
        raw_message(body, job_id=request.job_id, authorization="Bearer garbage"), routing_key="default"
    )
    event = await client.wait(request.job_id, timeout_s=GENERATION_TIMEOUT_S)
    assert await probe.dead_letter(request.job_id) is not None
    await asyncio.sleep(QUIET_AFTER_S)

    assert isinstance(event, SucceededEvent)
    assert [e.type for e in log.events if e.type != "progress"] == ["started", "succeeded"]


async def test_finding_2_init_key_of_another_tenant_is_forbidden(
    client: SdqueueClient, probe: BrokerProbe, worker: WorkerProcess, stack_settings: Settings
):
    victim = await client.generate(txt2img(), timeout_s=GENERATION_TIMEOUT_S)
    auth = stack_settings.auth
    messages = []
    for key in (victim.images[0].key, f"outputs/{txt2img().job_id}/0.png", record_key(victim.job_id)):
        request = img2img({"key": key})
        body = request.model_dump_json().encode()
        rejection = await expect_rejection(
            signed_message(body, job_id=request.job_id, auth=auth, sub="mallory"),
            job_id=request.job_id,
            code=ErrorCode.FORBIDDEN,
            client=client,
            probe=probe,
            worker=worker,
        )
        messages.append(rejection.event.error.message)

    assert len(set(messages)) == 1, "the answer must not tell which keys exist"


async def test_finding_2_owner_may_refine_its_own_output(client: SdqueueClient):
    first = await client.generate(txt2img(), timeout_s=GENERATION_TIMEOUT_S)

    refined = await client.generate(img2img({"key": first.images[0].key}), timeout_s=GENERATION_TIMEOUT_S)

    assert refined.images[0].key == f"outputs/{refined.job_id}/0.png"


async def test_finding_3_second_owner_cannot_take_a_running_job_id(
    client: SdqueueClient,
    probe: BrokerProbe,
    worker: WorkerProcess,
    stack_settings: Settings,
    s3_client: S3Client,
):
    request = txt2img(width=256, height=256, steps=20)
    log = await probe.watch(request.job_id)
    await client.submit(request)
    await log.wait_for("started", timeout_s=GENERATION_TIMEOUT_S)
    theirs = txt2img(job_id=request.job_id, prompt="mallory's picture").model_dump_json().encode()

    await client.publish_raw(
        signed_message(theirs, job_id=request.job_id, auth=stack_settings.auth, sub="mallory"),
        routing_key="default",
    )
    event = await client.wait(request.job_id, timeout_s=GENERATION_TIMEOUT_S)
    assert await probe.dead_letter(request.job_id) is not None, "the hijack attempt was not dead-lettered"
    await asyncio.sleep(QUIET_AFTER_S)

    assert isinstance(event, SucceededEvent)
    assert [e.type for e in log.events if e.type != "progress"] == ["started", "succeeded"]
    assert await client.read_record(request.job_id) == event
    stored = s3_client.get_object(Bucket=stack_settings.s3.bucket, Key=event.images[0].key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == event.images[0].sha256


@pytest.mark.parametrize(
    "key",
    [
        "inputs/{job}/../../outputs/x/0.png",
        "inputs/{job}//init.png",
        "/inputs/{job}/init.png",
        "inputs/{job}/in\x01.png",
    ],
    ids=["dot-dot", "double slash", "leading slash", "control character"],
)
async def test_finding_4_bad_init_key_is_invalid_request_at_once(
    key: str, client: SdqueueClient, probe: BrokerProbe, worker: WorkerProcess, stack_settings: Settings
):
    request = img2img({"key": "inputs/x/init.png"})
    body = body_with(request, init_image={"key": key.format(job=request.job_id)})
    started = time.monotonic()

    await expect_rejection(
        signed_message(body, job_id=request.job_id, auth=stack_settings.auth),
        job_id=request.job_id,
        code=ErrorCode.INVALID_REQUEST,
        client=client,
        probe=probe,
        worker=worker,
    )

    assert time.monotonic() - started < FAILED_TIMEOUT_S


async def test_finding_5_token_stamped_ahead_is_accepted(client: SdqueueClient, stack_settings: Settings):
    request = txt2img()
    body = request_body(request)
    ahead = int(time.time()) + 3  # the producer's clock runs 3 s ahead of the worker's
    token = hs256(
        claims(body, job_id=request.job_id, auth=stack_settings.auth, iat=ahead, nbf=ahead), stack_settings.auth
    )

    event = await client.generate(request, token=token, timeout_s=GENERATION_TIMEOUT_S)

    assert isinstance(event, SucceededEvent)
    minted = mint_token(body, job_id=request.job_id, subject="tester", auth=stack_settings.auth)
    assert "nbf" not in jwt.decode(minted, options={"verify_signature": False})
    assert stack_settings.auth.leeway_s == 30.0


async def test_finding_7_non_owner_cancel_does_not_replace_the_owners(
    client: SdqueueClient, probe: BrokerProbe, worker: WorkerProcess
):
    request = txt2img()
    log = await probe.watch(request.job_id)
    assert await client.cancel(request.job_id, subject="tester")
    assert await client.cancel(request.job_id, subject="mallory")
    await asyncio.sleep(0.5)  # both cancels reach the worker's control queue before the job

    await client.submit(request)
    event = await client.wait(request.job_id, timeout_s=GENERATION_TIMEOUT_S)

    assert isinstance(event, CancelledEvent), f"the owner's pending cancel was lost: {event.type}"
    assert not log.of_type("started")


async def test_finding_8_cancel_after_the_budget_ends_cancelled(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    isolated.start_worker("budget", updated(isolated.settings, limits={"max_generate_s": 0.5}))
    await isolated_client.wait_for_workers("default", timeout_s=120)
    request = txt2img(width=SLOW_SIDE_PX, height=SLOW_SIDE_PX, steps=3)
    log = await isolated_probe.watch(request.job_id)
    await isolated_client.submit(request)
    await log.wait_for("started", timeout_s=GENERATION_TIMEOUT_S)
    await asyncio.sleep(1.5)  # past the budget, and well before the first step ends

    await isolated_client.cancel(request.job_id)
    event = await isolated_client.wait(request.job_id, timeout_s=GENERATION_TIMEOUT_S)

    assert isinstance(event, CancelledEvent), f"{event.type}: {getattr(event, 'error', None)}"


def _http_status(url: str) -> int | None:
    """The status a plain, unauthenticated GET gets, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310  # a loopback URL we built
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


async def test_finding_10_filer_http_port_serves_nothing(
    seaweed: SeaweedStack, s3_client: S3Client, stack_settings: Settings
):
    bucket, key = stack_settings.s3.bucket, record_key(txt2img().job_id)
    s3_client.put_object(Bucket=bucket, Key=key, Body=b'{"secret": "record"}')
    filer = f"http://127.0.0.1:{seaweed.server.ports['filer']}"

    statuses = {
        path: _http_status(f"{filer}{path}") for path in ("/", f"/buckets/{bucket}/jobs/", f"/buckets/{bucket}/{key}")
    }

    assert all(status in (None, 404) for status in statuses.values()), statuses
    compose = (Path(__file__).parents[2] / "docker" / "docker-compose.yml").read_text()
    assert "-filer.disableHttp" in compose


def _example_environment() -> dict[str, str]:
    """docker/env.example as compose maps it into a process's `SDQUEUE_*` variables."""
    example = dict(
        line.split("=", 1)
        for line in (Path(__file__).parents[2] / "docker" / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {
        "SDQUEUE_BROKER__URL": f"amqp://sdqueue:{example['RABBITMQ_PASSWORD']}@127.0.0.1:5672/",
        "SDQUEUE_S3__ENDPOINT_URL": "http://127.0.0.1:9",
        "SDQUEUE_S3__ACCESS_KEY_ID": example["SDQUEUE_S3_ACCESS_KEY"],
        "SDQUEUE_S3__SECRET_ACCESS_KEY": example["SDQUEUE_S3_SECRET_KEY"],
        "SDQUEUE_AUTH__HS256_SECRET": example["SDQUEUE_HS256_SECRET"],
        "SDQUEUE_BRIDGE__TOKEN_SECRET": example["SDQUEUE_BRIDGE_TOKEN_SECRET"],
    }


@pytest.mark.services  # runs the worker and the bridge
@pytest.mark.parametrize("command", ["worker", "bridge"])
def test_finding_11_placeholders_of_env_example_refuse_to_start(command: str, tmp_path: Path):
    base = {name: value for name, value in os.environ.items() if not name.startswith("SDQUEUE_")}
    env = {**base, **_example_environment(), "SDQUEUE_STATE_DIR": str(tmp_path)}

    try:
        done = subprocess.run(
            [sys.executable, "-m", "sdqueue", command], env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`sdqueue {command}` kept running with the placeholder secrets")

    assert done.returncode != 0
    assert "placeholder" in done.stdout + done.stderr


PARTNER_HMAC = secrets.token_urlsafe(48)
PARTNER_WEBHOOK_SECRET = secrets.token_urlsafe(48)
PARTNER = AuthSettings(issuers=("partner",), hs256_secret=SecretStr(PARTNER_HMAC))


def _with_partner(settings: Settings, **groups: dict[str, Any]) -> Settings:
    """A second issuer, `partner`, with an HS256 secret of its own."""
    partner_keys = {"partner": {"hs256_secret": PARTNER_HMAC}}  # as JSON in the worker's environment
    return updated(settings, auth={"issuers": ("sdqueue", "partner"), "issuer_keys": partner_keys}, **groups)


async def test_finding_6_keys_and_owners_are_per_issuer(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    worker = isolated.start_worker("issuers", _with_partner(isolated.settings))
    await isolated_client.wait_for_workers("default", timeout_s=120)
    # The default issuer's secret signing for `partner`, with a high-priority quota: unverifiable, unreported.
    claimed = txt2img()
    body = claimed.model_dump_json().encode()
    auth = isolated.settings.auth
    token = hs256(claims(body, job_id=claimed.job_id, auth=auth, iss="partner", quota={"priority": "high"}), auth)
    await expect_unreported(
        raw_message(body, job_id=claimed.job_id, authorization=bearer(token)),
        job_id=claimed.job_id,
        client=isolated_client,
        probe=isolated_probe,
        worker=worker,
    )
    # Same subject, other issuer: not the owner, so its cancel is refused.
    request = txt2img(width=256, height=256, steps=20)
    log = await isolated_probe.watch(request.job_id)
    await isolated_client.submit(request)
    await log.wait_for("started", timeout_s=GENERATION_TIMEOUT_S)
    cancel_body = CancelCommand(job_id=request.job_id).model_dump_json().encode()
    cancel_token = mint_token(
        cancel_body, job_id=request.job_id, subject="tester", auth=PARTNER, scopes=(SCOPE_CANCEL,)
    )
    assert await isolated_client.cancel(request.job_id, token=cancel_token)

    event = await isolated_client.wait(request.job_id, timeout_s=GENERATION_TIMEOUT_S)

    assert isinstance(event, SucceededEvent), f"partner/tester cancelled sdqueue/tester's job: {event.type}"


async def test_finding_9_webhooks_are_signed_with_the_issuers_own_secret(
    isolated: IsolatedStack, isolated_client: SdqueueClient
):
    port = free_port()
    webhooks = {
        "allowed_hosts": (f"127.0.0.1:{port}",),
        "issuer_secrets": {"partner": SecretStr(PARTNER_WEBHOOK_SECRET)},
        "backoff_s": 0.2,
        "max_backoff_s": 0.8,
    }
    settings = _with_partner(isolated.settings, webhooks=webhooks)
    assert settings.webhooks.secret is not None
    global_secret = settings.webhooks.secret.get_secret_value()
    async with receiving(port) as receiver:
        isolated.start_worker("hooks", settings)
        await isolated_client.wait_for_workers("default", timeout_s=120)
        ours, theirs = txt2img(callback_url=receiver.url()), txt2img(callback_url=receiver.url())
        await isolated_client.submit(ours)
        body = request_body(theirs)
        await isolated_client.submit(theirs, token=mint_token(body, job_id=theirs.job_id, subject="bob", auth=PARTNER))
        arrived = await receiver.wait_for(2, timeout_s=GENERATION_TIMEOUT_S)

    by_job = {json.loads(webhook.body)["job_id"]: webhook for webhook in arrived}
    assert set(by_job) == {ours.job_id, theirs.job_id}, isolated.logs()
    verify = documented_verify()
    mine, partners = by_job[ours.job_id], by_job[theirs.job_id]
    assert verify(mine.body, mine.headers, global_secret)
    assert not verify(mine.body, mine.headers, PARTNER_WEBHOOK_SECRET)
    assert verify(partners.body, partners.headers, PARTNER_WEBHOOK_SECRET)
    assert not verify(partners.body, partners.headers, global_secret), "one secret signs for every receiver"
