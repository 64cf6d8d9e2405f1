"""Fair intake on the real broker: one caller's flood of 200 jobs does not starve another caller's 5."""

from __future__ import annotations

import asyncio

import pytest

from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.contracts import GenerationRequest, SucceededEvent, TerminalEvent
from tests.e2e.requests import txt2img
from tests.plugins.isolated import IsolatedStack, queue_depth, updated

FLOOD, LIGHT = 200, 5


async def _flood_then_light(
    isolated: IsolatedStack, client: SdqueueClient, settings: Settings
) -> tuple[list[TerminalEvent], list[TerminalEvent]]:
    """Start one worker, publish FLOOD jobs as `flood` and then LIGHT jobs as `light`; return both callers' events."""
    isolated.start_worker("fair", settings)
    await client.wait_for_workers("default", timeout_s=120)
    flood = [txt2img(seed=i) for i in range(FLOOD)]
    light = [txt2img(seed=10_000 + i) for i in range(LIGHT)]
    await asyncio.gather(*(client.submit(request, subject="flood") for request in flood))
    await asyncio.gather(*(client.submit(request, subject="light") for request in light))
    return await _wait_all(client, flood), await _wait_all(client, light)


async def _wait_all(client: SdqueueClient, requests: list[GenerationRequest]) -> list[TerminalEvent]:
    return list(await asyncio.gather(*(client.wait(request.job_id, timeout_s=240) for request in requests)))


def _flood_done_before(flood: list[TerminalEvent], light: list[TerminalEvent]) -> int:
    """How many flood jobs finished before the light caller's last job."""
    light_done = max(event.at for event in light)
    return sum(event.at < light_done for event in flood)


@pytest.mark.timeout(300)
async def test_a_light_caller_overtakes_a_flood(isolated: IsolatedStack, isolated_client: SdqueueClient):
    settings = updated(isolated.settings, runtime={"threads": 2})  # default prefetch and fairness settings
    flood, light = await _flood_then_light(isolated, isolated_client, settings)

    assert all(isinstance(event, SucceededEvent) for event in [*flood, *light]), isolated.logs()
    overtaken = _flood_done_before(flood, light)
    # Without fair intake the light caller waits for the whole flood (the control test below shows it).
    assert overtaken <= FLOOD // 5, f"{overtaken} flood jobs finished before the light caller's last one"
    assert await queue_depth(settings) == 0


@pytest.mark.timeout(300)
async def test_without_fair_intake_the_flood_goes_first(isolated: IsolatedStack, isolated_client: SdqueueClient):
    """The control: the same load with fairness off serves the callers in arrival order."""
    settings = updated(isolated.settings, runtime={"threads": 2}, fairness={"enabled": False})
    flood, light = await _flood_then_light(isolated, isolated_client, settings)

    assert all(isinstance(event, SucceededEvent) for event in [*flood, *light]), isolated.logs()
    assert _flood_done_before(flood, light) >= FLOOD * 9 // 10
