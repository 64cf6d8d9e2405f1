"""Model aliases route to the workers that serve them: one queue per alias, an unserved alias refused at publish."""

from __future__ import annotations

import asyncio

import pytest

from sdqueue.client import SdqueueClient, UnroutableRequest, new_job_id
from sdqueue.contracts import GenerationRequest, SucceededEvent
from tests.e2e.requests import txt2img
from tests.plugins.isolated import IsolatedStack


async def test_each_alias_runs_on_its_own_worker(isolated: IsolatedStack, isolated_client: SdqueueClient):
    source = isolated.settings.model_sources()["default"]
    for alias in ("fast", "slow"):
        only_this = isolated.settings.model_copy(update={"model": None, "models": {alias: source}})
        isolated.start_worker(f"serves-{alias}", only_this)
    for alias in ("fast", "slow"):
        await isolated_client.wait_for_workers(alias, timeout_s=120)

    jobs = [txt2img(model=alias, seed=i) for i in range(3) for alias in ("fast", "slow")]
    for request in jobs:
        await isolated_client.submit(request)
    events = [await isolated_client.wait(request.job_id, timeout_s=120) for request in jobs]

    assert all(isinstance(event, SucceededEvent) for event in events)
    assert [(event.model, event.worker) for event in events] == [
        (request.model, f"serves-{request.model}") for request in jobs
    ]
    with pytest.raises(UnroutableRequest):
        await isolated_client.submit(txt2img(model="default"))


async def test_a_models_defaults_fill_what_the_request_leaves_out(
    isolated: IsolatedStack, isolated_client: SdqueueClient
):
    defaults = {"default": {"width": 72, "height": 64, "steps": 2}}
    isolated.start_worker("with-defaults", isolated.settings.model_copy(update={"model_defaults": defaults}))
    await isolated_client.wait_for_workers("default", timeout_s=120)
    bare = GenerationRequest.model_validate(
        {"schema_version": 1, "job_id": new_job_id(), "mode": "txt2img", "prompt": "a lighthouse"}
    )
    sized = txt2img(width=64, height=80)

    events = [await isolated_client.generate(request, timeout_s=120) for request in (bare, sized)]

    assert [(event.images[0].width, event.images[0].height) for event in events] == [(72, 64), (64, 80)]


async def test_requests_before_any_worker_are_refused_and_the_client_stays_usable(
    isolated: IsolatedStack, isolated_client: SdqueueClient
):
    # A fresh vhost: no worker has declared its exchange or queue yet. Concurrent publishes each get a clear
    # refusal; none finds the channel closed under it, and the client works once a worker is there.
    refused = await asyncio.gather(*(isolated_client.submit(txt2img()) for _ in range(50)), return_exceptions=True)
    isolated.start_worker("late")
    await isolated_client.wait_for_workers("default", timeout_s=120)
    event = await isolated_client.generate(txt2img(), timeout_s=120)

    assert [type(outcome) for outcome in refused] == [UnroutableRequest] * 50
    assert isinstance(event, SucceededEvent)
