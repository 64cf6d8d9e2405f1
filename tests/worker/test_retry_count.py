"""Counting a request's retries from what the broker and the worker put in its headers."""

from __future__ import annotations

from sdqueue.config import BrokerSettings
from sdqueue.contracts.topology import RETRIES_HEADER, retry_queue
from sdqueue.worker.consume import retries_so_far
from sdqueue.worker.retry import retry_backoff_s


def _death(queue: str, reason: str, count: object) -> dict[str, object]:
    return {"queue": queue, "reason": reason, "count": count}


def test_retries_come_from_the_retry_queues_expired_deaths_or_the_workers_header():
    deaths = [_death(retry_queue("default"), "expired", 2), _death("sdqueue.requests.default", "rejected", 9)]

    assert retries_so_far({}, alias="default") == 0
    assert retries_so_far({"x-death": deaths}, alias="default") == 2
    assert retries_so_far({"x-death": deaths, RETRIES_HEADER: 3}, alias="default") == 3  # x-death not carried over
    assert retries_so_far({"x-death": deaths}, alias="other") == 0
    assert retries_so_far({RETRIES_HEADER: -50, "x-death": "junk"}, alias="default") == 0


def test_backoff_doubles_up_to_its_cap_even_for_a_forged_count():
    broker = BrokerSettings(retry_backoff_s=0.5, max_retry_backoff_s=10.0)

    assert [retry_backoff_s(n, broker=broker) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert retry_backoff_s(10**9, broker=broker) == 10.0
