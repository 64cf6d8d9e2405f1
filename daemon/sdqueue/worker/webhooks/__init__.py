"""Signed completion webhooks: the allow-list check at job time, the durable task queue, and the relay that POSTs.

Light on purpose (aio-pika, httpx, pydantic): `sdqueue webhooks relay` runs it without torch.
"""

from sdqueue.worker.webhooks._deliver import USER_AGENT, OnOutcome, WebhookOutcome, backoff_s, deliver_webhook
from sdqueue.worker.webhooks._relay import relaying, run_relay, running_relay
from sdqueue.worker.webhooks._targets import Target, check_callback_url, is_public_address, resolve_target
from sdqueue.worker.webhooks._tasks import BrokerWebhooks, WebhookTask, enqueue_webhook, read_task, task_signature

__all__ = [
    "USER_AGENT",
    "BrokerWebhooks",
    "OnOutcome",
    "Target",
    "WebhookOutcome",
    "WebhookTask",
    "backoff_s",
    "check_callback_url",
    "deliver_webhook",
    "enqueue_webhook",
    "is_public_address",
    "read_task",
    "relaying",
    "resolve_target",
    "run_relay",
    "running_relay",
    "task_signature",
]
