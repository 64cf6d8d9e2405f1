"""Model aliases route to the workers that serve them: one queue per alias, an unserved alias refused at publish."""

from __future__ import annotations

import pytest

from sdqueue.client import SdqueueClient, UnroutableRequest
from sdqueue.contracts import SucceededEvent
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
