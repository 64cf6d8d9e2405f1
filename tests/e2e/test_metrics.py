"""The worker's /metrics after 10 jobs: counters and histograms count exactly what happened."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sdqueue.client import SdqueueClient
from sdqueue.contracts import FailedEvent, SucceededEvent
from tests.e2e.requests import txt2img
from tests.plugins.isolated import IsolatedStack, free_port


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_after_ten_jobs(isolated: IsolatedStack, isolated_client: SdqueueClient):
    port = free_port()
    isolated.start_worker("counted", isolated.settings.model_copy(update={"health_port": port}))
    await isolated_client.wait_for_workers("default", timeout_s=120)
    good = [txt2img(seed=i, num_images=2 if i < 2 else 1) for i in range(8)]
    bad = [txt2img(scheduler="no_such_scheduler") for _ in range(2)]
    for request in [*good, *bad]:
        await isolated_client.submit(request)
    outcomes = [await isolated_client.wait(request.job_id, timeout_s=120) for request in [*good, *bad]]
    assert all(isinstance(event, SucceededEvent) for event in outcomes[:8])
    assert all(isinstance(event, FailedEvent) for event in outcomes[8:])

    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    samples = _samples(response.text)

    assert response.status_code == 200
    assert (
        samples[("sdqueue_jobs_total", frozenset({("model", "default"), ("outcome", "succeeded"), ("code", "")}))] == 8
    )
    failed = frozenset({("model", "default"), ("outcome", "failed"), ("code", "invalid_request")})
    assert samples[("sdqueue_jobs_total", failed)] == 2
    assert samples[("sdqueue_images_total", frozenset({("model", "default")}))] == 10
    for phase in ("generate", "encode", "upload"):
        assert samples[("sdqueue_phase_seconds_count", frozenset({("phase", phase)}))] == 8
    assert samples[("sdqueue_queue_wait_seconds_count", frozenset())] == 8
    assert samples[("sdqueue_batch_images_sum", frozenset())] == 10
    assert samples[("sdqueue_model_loaded", frozenset({("model", "default")}))] == 1
