"""Configuration for every sdqueue process: one pydantic-settings object, read once from `SDQUEUE_*`."""

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
    "to_environment",
]
