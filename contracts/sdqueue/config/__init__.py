"""Configuration for every sdqueue process: one pydantic-settings object, read once from `SDQUEUE_*`."""

from sdqueue.config.s3 import make_s3_client, object_url
from sdqueue.config.settings import (
    AuthSettings,
    BatchSettings,
    BridgeSettings,
    BrokerSettings,
    FairnessSettings,
    IssuerKeys,
    LimitSettings,
    ModelDefaults,
    RuntimeSettings,
    S3Settings,
    Settings,
    WebhookSettings,
    child_environment,
    load_settings,
    to_environment,
)

__all__ = [
    "AuthSettings",
    "BatchSettings",
    "BridgeSettings",
    "BrokerSettings",
    "FairnessSettings",
    "IssuerKeys",
    "LimitSettings",
    "ModelDefaults",
    "RuntimeSettings",
    "S3Settings",
    "Settings",
    "WebhookSettings",
    "child_environment",
    "load_settings",
    "make_s3_client",
    "object_url",
    "to_environment",
]
