"""The `/token` and `/v1` routes against the real broker, SeaweedFS and worker."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from sdqueue.bridge import issue_access_token, read_access_token
from sdqueue.bridge._accounts import Account
from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from tests.bridge.conftest import PASSWORDS, bridge_process, free_port, png_bytes

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

TINY = {"width": 64, "height": 64, "steps": 2}


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def submit(api: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> str:
    response = await api.post("/v1/txt2img", json={"prompt": "a red cube", **TINY, **fields}, headers=headers)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert body["links"]["status"] == f"/v1/jobs/{body['job_id']}"
    job_id: str = body["job_id"]
    return job_id


async def wait(api: httpx.AsyncClient, headers: dict[str, str], job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    response = await api.get(f"/v1/jobs/{job_id}/wait", params={"timeout": timeout_s}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_bad_credentials_are_refused(api: httpx.AsyncClient):
    wrong = await api.post("/token", data={"username": "alice", "password": "not-her-password"})
    unknown = await api.post("/token", data={"username": "mallory", "password": "whatever-it-is"})

    assert_error(wrong, 401, "unauthenticated")
    assert_error(unknown, 401, "unauthenticated")


async def test_token_answers_the_oauth2_shape(api: httpx.AsyncClient):
    response = await api.post("/token", data={"username": "alice", "password": "alice-password-1"})

    assert response.status_code == 200
    assert response.json()["token_type"] == "bearer"
    assert response.json()["access_token"].count(".") == 2


async def test_routes_need_a_token(api: httpx.AsyncClient, alice: dict[str, str]):
    assert_error(await api.post("/v1/txt2img", json={"prompt": "x"}), 401, "unauthenticated")
    assert_error(await api.get("/v1/jobs"), 401, "unauthenticated")
    bad = await api.get("/v1/jobs", headers={"Authorization": "Bearer not.a.token"})
    assert_error(bad, 401, "invalid_token")
    token = alice["Authorization"].removeprefix("Bearer ")
    for header, code in [
        (f"Basic {token}", "unauthenticated"),
        ("Bearer", "unauthenticated"),
        (f"Bearer {token}x", "invalid_token"),
    ]:
        response = await api.post("/v1/txt2img", json={"prompt": "x", **TINY}, headers={"Authorization": header})
        assert_error(response, 401, code)
        assert response.headers["www-authenticate"] == "Bearer"
    lower_case = await api.post(
        "/v1/txt2img", json={"prompt": "x", **TINY}, headers={"Authorization": f"bearer {token}"}
    )
    assert lower_case.status_code == 202, lower_case.text


async def test_expired_bridge_token_is_refused(
    api: httpx.AsyncClient, alice: dict[str, str], bridge_settings: Settings
):
    claims = read_access_token(alice["Authorization"].removeprefix("Bearer "), bridge=bridge_settings.bridge)
    account = Account(user_id=claims.user_id, name="alice", token_generation=claims.token_generation)
    old = issue_access_token(account, bridge=bridge_settings.bridge, now=time.time() - 2 * 86400)

    response = await api.get("/v1/jobs", headers={"Authorization": f"Bearer {old}"})

    assert_error(response, 401, "token_expired")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_txt2img_status_wait_redirect_and_history(api: httpx.AsyncClient, alice: dict[str, str]):
    job_id = await submit(api, alice, seed=7)

    status = await api.get(f"/v1/jobs/{job_id}", headers=alice)
    assert status.status_code == 200
    assert status.json()["status"] in {"queued", "running", "succeeded"}
    done = await wait(api, alice, job_id)
    assert done["status"] == "succeeded"
    image = done["result"]["images"][0]
    assert image["seed"] == 7
    redirect = await api.get(f"/v1/jobs/{job_id}/images/0", headers=alice)
    assert redirect.status_code == 307
    assert redirect.headers["location"].split("?")[0] == image["url"].split("?")[0]  # signed anew on each read
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(redirect.headers["location"])).content.startswith(b"\x89PNG")
    history = (await api.get("/v1/jobs", headers=alice)).json()["jobs"]
    assert history[0]["job_id"] == job_id
    assert history[0]["status"] == "succeeded"


async def test_wait_times_out_with_the_current_status(api: httpx.AsyncClient, alice: dict[str, str]):
    job_id = await submit(api, alice, width=128, height=128, steps=20)

    early = await wait(api, alice, job_id, timeout_s=0)

    assert early["status"] in {"queued", "running"}
    assert (await wait(api, alice, job_id))["status"] == "succeeded"


async def test_events_stream_progress_before_the_terminal_event(api: httpx.AsyncClient, alice: dict[str, str]):
    job_id = await submit(api, alice, width=128, height=128, steps=30)

    response = await api.get(f"/v1/jobs/{job_id}/events", headers=alice)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    types = [event["type"] for event in events]
    assert types[-1] == "succeeded"
    assert "progress" in types[:-1]
    assert types.count("succeeded") == 1


async def test_img2img_uploads_the_init_image(api: httpx.AsyncClient, alice: dict[str, str], s3_client: S3Client):
    response = await api.post(
        "/v1/img2img",
        data={"prompt": "a blue sphere", "strength": "0.6", **{key: str(value) for key, value in TINY.items()}},
        files={"image": ("init.png", png_bytes(), "image/png")},
        headers=alice,
    )

    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    done = await wait(api, alice, job_id)
    assert done["status"] == "succeeded", done
    assert done["mode"] == "img2img"
    bucket = api_bucket(s3_client, job_id)
    assert bucket == [f"inputs/{job_id}/init.png"]


def api_bucket(s3_client: S3Client, job_id: str) -> list[str]:
    from tests.plugins.services import TEST_BUCKET

    listing = s3_client.list_objects_v2(Bucket=TEST_BUCKET, Prefix=f"inputs/{job_id}/")
    return [entry.get("Key", "") for entry in listing.get("Contents", [])]


async def test_non_image_upload_is_invalid_image(api: httpx.AsyncClient, alice: dict[str, str]):
    response = await api.post(
        "/v1/img2img",
        data={"prompt": "x", **{key: str(value) for key, value in TINY.items()}},
        files={"image": ("notes.png", b"this is not a picture at all", "image/png")},
        headers=alice,
    )

    assert_error(response, 400, "invalid_image")


async def test_oversized_upload_is_image_too_large(
    api: httpx.AsyncClient, alice: dict[str, str], bridge_settings: Settings
):
    too_big = png_bytes() + b"\0" * bridge_settings.bridge.max_upload_bytes

    response = await api.post(
        "/v1/img2img",
        data={"prompt": "x"},
        files={"image": ("big.png", too_big, "image/png")},
        headers=alice,
    )

    assert_error(response, 413, "image_too_large")


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"width": 65}, 400, "invalid_request"),
        ({"prompt": ""}, 400, "invalid_request"),
        ({"unknown_field": 1}, 400, "invalid_request"),
        ({"steps": 151}, 400, "invalid_request"),
        ({"width": 512, "height": 512}, 422, "limits_exceeded"),
        ({"num_images": 3}, 422, "limits_exceeded"),
        ({"model": "no-such-model"}, 404, "unknown_model"),
    ],
)
async def test_bad_requests_get_the_contract_codes(
    api: httpx.AsyncClient, alice: dict[str, str], fields: dict[str, Any], status: int, code: str
):
    response = await api.post("/v1/txt2img", json={"prompt": "x", **TINY, **fields}, headers=alice)

    assert_error(response, status, code)


@pytest.mark.parametrize("body", [b"", b"{not json", b"[]", b'"a prompt"'])
async def test_a_txt2img_body_that_is_not_a_json_object_is_an_invalid_request(
    api: httpx.AsyncClient, alice: dict[str, str], body: bytes
):
    headers = {**alice, "Content-Type": "application/json"}

    assert_error(await api.post("/v1/txt2img", content=body, headers=headers), 400, "invalid_request")


async def test_another_users_job_is_invisible(api: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]):
    job_id = await submit(api, alice)
    await wait(api, alice, job_id)

    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/wait?timeout=0"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/images/0"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
    ]:
        assert_error(await api.request(method, path, headers=bob), 404, "not_found")
    assert job_id not in [job["job_id"] for job in (await api.get("/v1/jobs", headers=bob)).json()["jobs"]]


async def test_unknown_job_is_not_found(api: httpx.AsyncClient, alice: dict[str, str]):
    assert_error(await api.get("/v1/jobs/nope", headers=alice), 404, "not_found")


async def test_health_readiness_and_metrics(api: httpx.AsyncClient):
    assert (await api.get("/healthz")).json()["status"] == "ok"
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"broker": True, "storage": True, "database": True}
    metrics = await api.get("/metrics")
    assert metrics.status_code == 200
    assert "sdqueue_bridge_requests_total" in metrics.text


async def test_web_page_is_served(api: httpx.AsyncClient):
    response = await api.get("/")

    assert response.status_code == 200
    assert '<script src="/static/app.js"' in response.text
    assert "EventSource cannot" in (await api.get("/static/app.js")).text


async def test_cancel_a_queued_and_a_running_job(api: httpx.AsyncClient, alice: dict[str, str]):
    running = await submit(api, alice, width=256, height=256, steps=150)
    await _wait_until_running(api, alice, running)
    # Submitted only once the first holds the generation thread: earlier tests' jobs can still count against
    # alice's fair share, and a first job sent to the overflow lane would let this one run (and finish) first.
    queued = await submit(api, alice)

    cancel_queued = await api.post(f"/v1/jobs/{queued}/cancel", headers=alice)
    cancel_running = await api.post(f"/v1/jobs/{running}/cancel", headers=alice)

    assert cancel_queued.status_code == 202, cancel_queued.text
    assert cancel_running.json() == {"job_id": running, "status": "cancelling"}
    stopped = await wait(api, alice, running)
    skipped = await wait(api, alice, queued)
    assert stopped["status"] == "cancelled", stopped
    assert stopped["result"]["error"]["code"] == "cancelled"
    assert skipped["status"] == "cancelled", skipped
    again = await api.post(f"/v1/jobs/{running}/cancel", headers=alice)
    assert_error(again, 409, "conflict")


async def _wait_until_running(api: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = (await api.get(f"/v1/jobs/{job_id}", headers=headers)).json()
        if status["status"] == "running" and status["progress"]["step"] > 0:
            return
        assert status["status"] in {"queued", "running"}, status
        await asyncio.sleep(0.05)
    pytest.fail(f"job {job_id} never started")


def test_a_bridge_of_two_uvicorn_workers_serves_and_counts_as_one(
    bridge_settings: Settings, client: SdqueueClient, tmp_path: Path
):
    bridge = bridge_settings.bridge.model_copy(update={"port": free_port(), "processes": 2})
    settings = bridge_settings.model_copy(update={"bridge": bridge, "state_dir": tmp_path})
    with bridge_process(settings, log_path=tmp_path / "bridge.log") as live:
        token = httpx.post(f"{live.url}/token", data={"username": "alice", "password": PASSWORDS["alice"]})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        accepted = [
            httpx.post(f"{live.url}/v1/txt2img", json={"prompt": "two workers", **TINY}, headers=headers)
            for _ in range(6)
        ]
        done = [
            httpx.get(f"{live.url}/v1/jobs/{answer.json()['job_id']}/wait", params={"timeout": 60}, headers=headers)
            for answer in accepted
        ]
        metrics = httpx.get(f"{live.url}/metrics").text
        log = live.log_path.read_text(errors="replace")

    assert [answer.status_code for answer in accepted] == [202] * 6
    assert [answer.json()["status"] for answer in done] == ["succeeded"] * 6
    assert log.count("Started server process") == 2  # uvicorn's two workers
    assert 'sdqueue_bridge_jobs_submitted_total{mode="txt2img"} 6.0' in metrics  # summed over both processes
