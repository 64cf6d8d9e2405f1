"""Development services: a real S3 server (SeaweedFS) and a RabbitMQ broker, for dev, demos and tests."""

from __future__ import annotations

from sdqueue.devstack.rabbit import DevstackError, broker_is_up, create_vhost, delete_vhost, ensure_rabbitmq
from sdqueue.devstack.seaweed import SeaweedServer, find_weed_binary, serve_storage, start_seaweed

__all__ = [
    "DevstackError",
    "SeaweedServer",
    "broker_is_up",
    "create_vhost",
    "delete_vhost",
    "ensure_rabbitmq",
    "find_weed_binary",
    "serve_storage",
    "start_seaweed",
]
