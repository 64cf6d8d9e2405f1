"""Workers die, get signals, or meet a poison request: every job still ends with exactly one result."""

from __future__ import annotations

import asyncio
import io
import subprocess
import time

import pytest
from PIL import Image

from sdqueue.client import SdqueueClient
from sdqueue.contracts import ErrorCode, FailedEvent, GenerationRequest, ProgressEvent, SucceededEvent
from tests.e2e.requests import txt2img
from tests.plugins.faulty_worker import CRASH_EXIT_CODE, EXIT_AFTER_UPLOAD, FAIL_PROMPT
from tests.plugins.isolated import IsolatedStack, updated
from tests.plugins.stack import BrokerProbe, EventLog

SLOW = {"width": 256, "height": 256, "steps": 40}  # seconds of generation on 2 cores (7 s on the reference machine)
# A drain that waited for this whole grace, instead of for the job in hand, would fail the test long before.
LONG_GRACE_S = 300.0
# Beyond the job in hand, a drain closes the worker's connections and threads: a second or two, even under load.
SHUTDOWN_SLACK_S = 5.0


async def _wait_for(predicate: object, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _seconds_for_one(client: SdqueueClient, request: GenerationRequest) -> float:
    """Wall time of one job from submission to its result: this machine's speed under its present load."""
    started = time.monotonic()
    await client.generate(request, timeout_s=120)
    return time.monotonic() - started


def _started_by(logs: dict[str, EventLog], worker: str) -> list[str]:
    return [job for job, log in logs.items() if any(e.type == "started" and e.worker == worker for e in log.events)]


async def _assert_one_result_each(
    client: SdqueueClient, stack: IsolatedStack, logs: dict[str, EventLog], job_ids: list[str]
) -> list[SucceededEvent]:
    results = []
    for job_id in job_ids:
        event = await client.wait(job_id, timeout_s=120)
        assert isinstance(event, SucceededEvent), f"{job_id}: {event}\n{stack.logs()}"
        assert await client.read_record(job_id) == event
        assert stack.output_keys(job_id) == [image.key for image in event.images]
        results.append(event)
    await asyncio.sleep(0.5)
    for job_id in job_ids:
        assert len(logs[job_id].of_type("succeeded")) == 1, f"{job_id} finished twice"
    return results


async def test_kill_9_mid_generation_with_a_second_worker(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    victim = isolated.start_worker("victim")
    await isolated_client.wait_for_workers("default", timeout_s=120)
    isolated.start_worker("survivor")
    logs = await isolated_probe.watch_all()
    jobs = [txt2img(**SLOW, seed=i) for i in range(6)]
    for request in jobs:
        await isolated_client.submit(request)

    await _wait_for(lambda: _started_by(logs, "victim"), timeout_s=60, what="the victim to start a job")
    killed_job = _started_by(logs, "victim")[0]
    isolated.kill(victim)

    results = await _assert_one_result_each(isolated_client, isolated, logs, [r.job_id for r in jobs])
    redone = next(event for event in results if event.job_id == killed_job)
    assert redone.worker == "survivor"
    assert redone.attempt == 2


async def test_kill_between_upload_and_record_redelivers_without_new_objects(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    # The faulty worker exits with os._exit (as kill -9 would) right after uploading.
    crashing = isolated.start_worker("crashing", faults={EXIT_AFTER_UPLOAD: "1"})
    await isolated_client.wait_for_workers("default", timeout_s=120)
    logs = await isolated_probe.watch_all()
    request = txt2img(num_images=2, seed=3)
    await isolated_client.submit(request)

    assert crashing.process.wait(timeout=120) == CRASH_EXIT_CODE, isolated.logs()
    assert "test fault: exiting between upload and record" in crashing.log_tail()
    uploaded = isolated.output_keys(request.job_id)
    assert len(uploaded) == 2
    assert await isolated_client.read_record(request.job_id) is None
    isolated.start_worker("healthy")

    [event] = await _assert_one_result_each(isolated_client, isolated, logs, [request.job_id])
    assert isolated.output_keys(request.job_id) == uploaded
    assert event.attempt == 2
    for image in event.images:
        data = await isolated_client.fetch_image(image)  # checked against the event's sha256
        assert Image.open(io.BytesIO(data)).size == (64, 64)


async def test_poison_request_is_dead_lettered_once_while_others_flow(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    # The faulty worker's generation raises an unexpected error for prompts with this marker.
    worker = isolated.start_worker("worker", faults={FAIL_PROMPT: "POISON"})
    await isolated_client.wait_for_workers("default", timeout_s=120)
    logs = await isolated_probe.watch_all()
    poison = txt2img(prompt="POISON pill")
    good = [txt2img(seed=i) for i in range(5)]
    for request in [poison, *good]:
        await isolated_client.submit(request)

    failed = await isolated_client.wait(poison.job_id, timeout_s=120)
    await _assert_one_result_each(isolated_client, isolated, logs, [r.job_id for r in good])

    assert isinstance(failed, FailedEvent)
    assert failed.error.code is ErrorCode.DELIVERY_LIMIT_EXCEEDED
    assert failed.attempt == isolated.settings.broker.delivery_limit + 1
    assert len(logs[poison.job_id].of_type("failed")) == 1
    assert set(await isolated_probe.dead_letters()) == {poison.job_id}
    assert "test fault: generation fails for this prompt" in worker.log_path.read_text()


@pytest.mark.timeout(300)  # two slow jobs, each seconds long, and many more on a loaded machine
async def test_sigterm_lets_the_job_in_hand_finish_and_exits_0(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    patient = isolated.settings.model_copy(update={"shutdown_grace_s": LONG_GRACE_S})
    worker = isolated.start_worker("draining", patient)
    await isolated_client.wait_for_workers("default", timeout_s=120)
    logs = await isolated_probe.watch_all()
    # The drain may take as long as the job in hand, so its bound is scaled from one such job timed here.
    job_s = await _seconds_for_one(isolated_client, txt2img(**SLOW, seed=1))
    request = txt2img(**SLOW, seed=2)
    await isolated_client.submit(request)
    await _wait_for(lambda: request.job_id in _started_by(logs, "draining"), timeout_s=60, what="the job to start")

    worker.process.terminate()

    drain_bound_s = 2 * job_s + SHUTDOWN_SLACK_S
    try:
        code = worker.process.wait(timeout=drain_bound_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the drain took over {drain_bound_s:.1f}s (one job: {job_s:.1f}s)\n{isolated.logs()}")
    assert code == 0, isolated.logs()
    event = await isolated_client.wait(request.job_id, timeout_s=30)
    assert isinstance(event, SucceededEvent)
    assert (event.worker, event.attempt) == ("draining", 1)


async def test_sigterm_past_the_grace_requeues_for_another_worker(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    impatient = isolated.settings.model_copy(update={"shutdown_grace_s": 0.2})
    worker = isolated.start_worker("impatient", impatient)
    await isolated_client.wait_for_workers("default", timeout_s=120)
    logs = await isolated_probe.watch_all()
    request = txt2img(width=512, height=512, steps=60)
    await isolated_client.submit(request)
    await _wait_for(lambda: _started_by(logs, "impatient"), timeout_s=60, what="the job to start")

    worker.process.terminate()

    assert worker.process.wait(timeout=30) == 0, isolated.logs()
    assert await isolated_client.read_record(request.job_id) is None
    isolated.start_worker("successor")
    [event] = await _assert_one_result_each(isolated_client, isolated, logs, [request.job_id])
    assert (event.worker, event.attempt) == ("successor", 2)


async def test_generation_over_its_time_budget_fails_as_limits_exceeded(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    # The slow job needs many seconds; the quick one a tenth of one, with room for a loaded CI machine.
    budget_s = 1.5
    isolated.start_worker("strict", updated(isolated.settings, limits={"max_generate_s": budget_s}))
    await isolated_client.wait_for_workers("default", timeout_s=120)
    logs = await isolated_probe.watch_all()
    slow, quick = txt2img(width=512, height=512, steps=60), txt2img()

    await isolated_client.submit(slow)
    failed = await isolated_client.wait(slow.job_id, timeout_s=60)
    succeeded = await isolated_client.generate(quick, timeout_s=60)

    assert isinstance(failed, FailedEvent)
    assert failed.error.code is ErrorCode.LIMITS_EXCEEDED
    assert failed.timings.generate is not None
    # Stopped, not run to its end: the last step is always reported, and it never came.
    steps_done = max((e.step for e in logs[slow.job_id].events if isinstance(e, ProgressEvent)), default=0)
    assert steps_done < slow.steps
    # Stopped soon after the budget: within a few steps' time, as fast as this machine runs them now.
    step_s = failed.timings.generate / max(steps_done, 1)
    assert failed.timings.generate < budget_s + 3 * step_s + 1.0, f"{steps_done} steps in {failed.timings.generate}s"
    assert succeeded.images
    assert set(await isolated_probe.dead_letters()) == {slow.job_id}


async def test_second_signal_exits_at_once_and_the_broker_redelivers(
    isolated: IsolatedStack, isolated_client: SdqueueClient, isolated_probe: BrokerProbe
):
    worker = isolated.start_worker("hasty")
    await isolated_client.wait_for_workers("default", timeout_s=120)
    logs = await isolated_probe.watch_all()
    request = txt2img(width=512, height=512, steps=60)
    await isolated_client.submit(request)
    await _wait_for(lambda: _started_by(logs, "hasty"), timeout_s=60, what="the job to start")

    worker.process.terminate()
    await asyncio.sleep(0.3)
    worker.process.terminate()

    assert worker.process.wait(timeout=5) == 128 + 15
    isolated.start_worker("successor")
    [event] = await _assert_one_result_each(isolated_client, isolated, logs, [request.job_id])
    assert (event.worker, event.attempt) == ("successor", 2)
