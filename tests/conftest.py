"""Shared fixtures: real services (RabbitMQ vhost, SeaweedFS, PostgreSQL), the tiny model, and a running worker."""

pytest_plugins = [
    "tests.plugins.services",
    "tests.plugins.tiny_model",
    "tests.plugins.stack",
    "tests.plugins.isolated",
    "tests.plugins.database",
]
