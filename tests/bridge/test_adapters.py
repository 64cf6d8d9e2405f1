"""Adapters through the bridge: `GET /v1/adapters` from the workers' heartbeats, and txt2img, img2img and inpaint
with adapters by name (pinned to the announced sha256) or by key, against the session worker and its named LoRA."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import httpx
import pytest

from sdqueue.bridge._fleet import pin_adapters
from sdqueue.bridge._models import AdapterChoice
from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.contracts import NamedAdapter
from sdqueue.contracts.errors import BridgeError
from tests.bridge.conftest import png_bytes
from tests.bridge.test_jobs import assert_error, wait
from tests.bridge.test_models import HEARD_WITHIN_S, heartbeat, send
from tests.plugins.stack import SESSION_LORA

TINY = {"width": 64, "height": 64, "steps": 2, "seed": 11}


def _sha256(settings: Settings) -> str:
    return hashlib.sha256(settings.adapters[SESSION_LORA].read_bytes()).hexdigest()


async def _listed(api: httpx.AsyncClient, headers: dict[str, str], name: str) -> list[dict[str, Any]]:
    """The bridge's entries for `name`, once the bridge has heard a heartbeat that holds it."""
    deadline = time.monotonic() + HEARD_WITHIN_S
    while True:
        response = await api.get("/v1/adapters", headers=headers)
        assert response.status_code == 200, response.text
        entries = [entry for entry in response.json()["adapters"] if entry["name"] == name]
        if entries or time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.5)


async def _succeeded(api: httpx.AsyncClient, headers: dict[str, str], response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    done = await wait(api, headers, response.json()["job_id"])
    assert done["status"] == "succeeded", done
    result: dict[str, Any] = done["result"]
    return result


async def test_the_session_workers_named_lora_is_listed_with_its_hash(
    api: httpx.AsyncClient, alice: dict[str, str], stack_settings: Settings
):
    entries = await _listed(api, alice, SESSION_LORA)

    assert len(entries) == 1, entries
    entry = entries[0]
    assert (entry["sha256"], entry["kind"], entry["models"]) == (_sha256(stack_settings), "lora", ["default"])
    assert entry["bytes"] == stack_settings.adapters[SESSION_LORA].stat().st_size
    assert entry["workers"] >= 1
    assert_error(await api.get("/v1/adapters"), 401, "unauthenticated")


async def test_txt2img_by_name_is_pinned_to_the_announced_file_and_changes_the_image(
    api: httpx.AsyncClient, alice: dict[str, str], stack_settings: Settings
):
    await _listed(api, alice, SESSION_LORA)
    plain = await _succeeded(api, alice, await api.post("/v1/txt2img", json={"prompt": "a fox", **TINY}, headers=alice))
    body = {"prompt": "a fox", **TINY, "adapters": [{"name": SESSION_LORA, "scale": 0.8}]}

    styled = await _succeeded(api, alice, await api.post("/v1/txt2img", json=body, headers=alice))

    assert styled["adapters"] == [
        {"key": None, "name": SESSION_LORA, "sha256": _sha256(stack_settings), "kind": "lora", "scale": 0.8,
         "token": None}
    ]  # fmt: skip
    assert styled["images"][0]["sha256"] != plain["images"][0]["sha256"]


async def test_img2img_and_inpaint_take_adapters_as_a_json_form_field(api: httpx.AsyncClient, alice: dict[str, str]):
    await _listed(api, alice, SESSION_LORA)
    form = {"prompt": "a fox", **{name: str(value) for name, value in TINY.items()}}
    adapters = json.dumps([{"name": SESSION_LORA, "scale": 0.5}])
    image = ("init.png", png_bytes(64), "image/png")
    mask = ("mask.png", png_bytes(64, color=(255, 255, 255)), "image/png")

    img2img = await api.post("/v1/img2img", data={**form, "adapters": adapters}, files={"image": image}, headers=alice)
    inpaint = await api.post(
        "/v1/inpaint", data={**form, "adapters": adapters}, files={"image": image, "mask": mask}, headers=alice
    )

    for response in (img2img, inpaint):
        result = await _succeeded(api, alice, response)
        assert [(a["name"], a["scale"]) for a in result["adapters"]] == [(SESSION_LORA, 0.5)]
    not_json = await api.post("/v1/img2img", data={**form, "adapters": "[{"}, files={"image": image}, headers=alice)
    assert_error(not_json, 400, "invalid_request")
    assert "adapters must be a JSON list" in not_json.json()["error"]["message"]


async def test_a_content_addressed_key_pins_itself_and_any_other_key_needs_its_sha256(
    api: httpx.AsyncClient, alice: dict[str, str], stack_settings: Settings, client: SdqueueClient
):
    sha256 = _sha256(stack_settings)
    await client.upload_adapter(stack_settings.adapters[SESSION_LORA].read_bytes())
    by_key = {"prompt": "a fox", **TINY, "adapters": [{"key": f"adapters/{sha256}.safetensors", "scale": 0.8}]}

    result = await _succeeded(api, alice, await api.post("/v1/txt2img", json=by_key, headers=alice))

    assert [(a["key"], a["sha256"]) for a in result["adapters"]] == [(f"adapters/{sha256}.safetensors", sha256)]
    other_key = {"prompt": "x", **TINY, "adapters": [{"key": "adapters/styles/fox.safetensors"}]}
    refused = await api.post("/v1/txt2img", json=other_key, headers=alice)
    assert_error(refused, 400, "invalid_request")
    assert "needs its sha256" in refused.json()["error"]["message"]


async def test_bad_adapter_choices_are_invalid_requests(api: httpx.AsyncClient, alice: dict[str, str]):
    await _listed(api, alice, SESSION_LORA)
    for adapters, says in (
        ([{"name": "nobody-holds-this"}], "holds adapter 'nobody-holds-this'"),
        ([{"name": SESSION_LORA, "sha256": "0" * 64}], f"holds adapter '{SESSION_LORA}'"),
        ([{"name": SESSION_LORA, "kind": "embedding", "token": "<fox>"}], f"holds adapter '{SESSION_LORA}'"),
        ([{"name": SESSION_LORA, "key": "adapters/x.safetensors"}], "exactly one of key and name"),
        ([{"key": "outputs/x.safetensors", "sha256": "0" * 64}], "adapters"),
        ([{"name": SESSION_LORA, "scale": 5}], "scale"),
        ([{"name": SESSION_LORA}] * 2, "listed twice"),
        ([{"name": f"n{i}"} for i in range(9)], "adapters"),
    ):
        response = await api.post("/v1/txt2img", json={"prompt": "x", **TINY, "adapters": adapters}, headers=alice)
        assert_error(response, 400, "invalid_request")
        assert says in response.json()["error"]["message"], (adapters, response.json())
    too_many = [{"key": f"adapters/{i:064x}.safetensors"} for i in range(5)]
    over_cap = await api.post("/v1/txt2img", json={"prompt": "x", **TINY, "adapters": too_many}, headers=alice)
    assert_error(over_cap, 422, "limits_exceeded")


async def test_a_name_held_as_two_files_needs_the_callers_sha256(
    api: httpx.AsyncClient, alice: dict[str, str], bridge_settings: Settings
):
    """Two workers of one model announce different files under one name: the bridge will not guess which."""
    user = bridge_settings.broker.user_name
    first, second = (NamedAdapter(name="twin", sha256=f"{n:064x}", kind="lora", bytes=10) for n in (1, 2))
    beats = [heartbeat(worker, models={"twins": "sd1"}, adapters=(adapter,)) for worker, adapter in
             (("twin-a", first), ("twin-b", second))]  # fmt: skip
    for beat in beats:
        await send(bridge_settings, beat, user_id=user)
    try:
        listed = (await api.get("/v1/adapters", headers=alice)).json()["adapters"]
        body = {"model": "twins", "prompt": "x", "adapters": [{"name": "twin"}]}
        unpinned = await api.post("/v1/txt2img", json=body, headers=alice)
    finally:
        for beat in beats:
            await send(bridge_settings, beat.model_copy(update={"state": "draining"}), user_id=user)

    assert [(entry["sha256"], entry["models"]) for entry in listed if entry["name"] == "twin"] == [
        (first.sha256, ["twins"]),
        (second.sha256, ["twins"]),
    ]
    assert_error(unpinned, 400, "invalid_request")
    assert "give its sha256" in unpinned.json()["error"]["message"]


def test_a_name_is_pinned_only_to_what_workers_of_the_requested_model_hold():
    style = NamedAdapter(name="style", sha256="a" * 64, kind="lora", bytes=10)
    fox = NamedAdapter(name="fox", sha256="b" * 64, kind="embedding", bytes=10)
    xl_only = NamedAdapter(name="xl-only", sha256="c" * 64, kind="lora", bytes=1)
    fleet = [
        heartbeat("w1", models={"default": "sd1"}, adapters=(style, fox)),
        heartbeat("w2", models={"xl": "sdxl"}, adapters=(xl_only,)),
    ]
    choices = [AdapterChoice(name="style", scale=0.5), AdapterChoice(name="fox", token="<fox>")]

    pinned = pin_adapters(choices, model="default", fleet=fleet)

    assert pinned == [
        {"name": "style", "sha256": "a" * 64, "kind": "lora", "scale": 0.5},
        {"name": "fox", "sha256": "b" * 64, "kind": "embedding", "scale": 1.0, "token": "<fox>"},
    ]
    with pytest.raises(BridgeError, match="no live worker of model 'default' holds adapter 'xl-only'"):
        pin_adapters([AdapterChoice(name="xl-only")], model="default", fleet=fleet)
