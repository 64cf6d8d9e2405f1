"""Broker names, routing keys, headers and storage keys shared by every producer and consumer."""

from __future__ import annotations

from typing import Any

REQUESTS_EXCHANGE = "sdqueue.requests"
DEAD_EXCHANGE = "sdqueue.dead"
DEAD_QUEUE = "sdqueue.dead"
EVENTS_EXCHANGE = "sdqueue.events"
CONTROL_EXCHANGE = "sdqueue.control"
REQUESTS_QUEUE_PREFIX = "sdqueue.requests."
WEBHOOKS_QUEUE = "sdqueue.webhooks"
OVERFLOW_QUEUE_PREFIX = "sdqueue.overflow."
RETRY_QUEUE_PREFIX = "sdqueue.retry."
# Each exchange's AMQP type. Every party declares what it publishes to or binds (declares are idempotent), so a
# producer that starts before any worker gets "no route" rather than a channel the broker closes.
EXCHANGE_TYPES = {
    REQUESTS_EXCHANGE: "direct",
    DEAD_EXCHANGE: "fanout",
    EVENTS_EXCHANGE: "topic",
    CONTROL_EXCHANGE: "fanout",
}

AUTHORIZATION_HEADER = "authorization"
DELIVERY_COUNT_HEADER = "x-delivery-count"
DEATH_HEADER = "x-death"
# The worker's own count of a request's retries, for brokers that do not carry a client-copied `x-death` forward.
RETRIES_HEADER = "sdqueue-retries"
CALLBACK_URL_HEADER = "sdqueue-callback-url"
TASK_SIGNATURE_HEADER = "sdqueue-task-signature"
TASK_ISSUER_HEADER = "sdqueue-issuer"
DEFAULT_MODEL_ALIAS = "default"
DEFAULT_DELIVERY_LIMIT = 3
# Redeliveries of one webhook task (relay crashes and restarts); its POST retries happen inside one delivery.
WEBHOOK_DELIVERY_LIMIT = 10


def request_queue_arguments(delivery_limit: int = DEFAULT_DELIVERY_LIMIT) -> dict[str, Any]:
    """Arguments of a request queue; a redeclare with other values fails, so they come from this one place."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def webhook_queue_arguments() -> dict[str, Any]:
    """Arguments of `sdqueue.webhooks`: a quorum queue like the request queues, dead-lettering to `sdqueue.dead`."""
    return request_queue_arguments(WEBHOOK_DELIVERY_LIMIT)


def retry_queue_arguments(alias: str) -> dict[str, Any]:
    """Arguments of an alias's retry queue: each message waits out its own TTL (`expiration`), then is
    dead-lettered back to `sdqueue.requests` under the alias, as a fresh delivery."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": REQUESTS_EXCHANGE,
        "x-dead-letter-routing-key": alias,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def retry_queue(alias: str) -> str:
    """Name the quorum queue where a request waits out its backoff before its next attempt, per model alias."""
    return f"{RETRY_QUEUE_PREFIX}{alias}"


def requests_queue(alias: str) -> str:
    """Name the quorum queue that holds requests for one model alias."""
    return f"{REQUESTS_QUEUE_PREFIX}{alias}"


def overflow_queue(alias: str) -> str:
    """Name the quorum queue where a worker moves the jobs of callers over their fair share, per model alias."""
    return f"{OVERFLOW_QUEUE_PREFIX}{alias}"


def event_routing_key(job_id: str, event_type: str) -> str:
    """Routing key of one event on the topic exchange: `job.<job_id>.<type>`."""
    return f"job.{job_id}.{event_type}"


def job_events_pattern(job_id: str) -> str:
    """Binding pattern that matches every event of one job."""
    return f"job.{job_id}.*"


def output_key(job_id: str, index: int, extension: str) -> str:
    """Object key of generated image `index` of a job."""
    return f"outputs/{job_id}/{index}.{extension}"


def input_key(job_id: str, extension: str) -> str:
    """Object key under which a client uploads a job's init image."""
    return f"inputs/{job_id}/init.{extension}"


def mask_key(job_id: str, extension: str) -> str:
    """Object key under which a client uploads an inpaint job's mask (white repaints, black keeps)."""
    return f"inputs/{job_id}/mask.{extension}"


def record_key(job_id: str) -> str:
    """Object key of a job's result record: its terminal event."""
    return f"jobs/{job_id}.json"


def claim_key(job_id: str) -> str:
    """Object key of a job id's claim: which caller (issuer and subject) the id belongs to."""
    return f"jobs/{job_id}.claim"
