"""Shared fixtures: real services (RabbitMQ vhost, SeaweedFS, PostgreSQL), the tiny model, and a running worker.

Every test that needs one of those services is marked `services`, here, from the fixtures it uses; the rest
is the fast tier (`make check`, `pytest -m "not services"`).
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.plugins.services",
    "tests.plugins.tiny_model",
    "tests.plugins.stack",
    "tests.plugins.isolated",
    "tests.plugins.database",
]

# The fixtures that start or reach a real service. A test's `fixturenames` holds every fixture it needs,
# transitively, so whatever is built on these (a worker, a bridge, an isolated stack) is covered too.
SERVICE_FIXTURES = frozenset({"amqp_url", "seaweed", "postgres_cluster"})

# Parametrized fixtures that reach PostgreSQL through `request.getfixturevalue` for one param only.
POSTGRES_BACKED = ("blank_database_url", "bridge_database_url")


def needs_services(item: pytest.Item) -> bool:
    """Whether the test uses a real broker, S3 server or database server, directly or through its fixtures."""
    if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return any(params.get(name) == "postgresql" for name in POSTGRES_BACKED)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test that needs a real service, so `-m "not services"` selects the fast tier."""
    for item in items:
        if needs_services(item):
            item.add_marker(pytest.mark.services)
