"""The one way every sdqueue process connects to RabbitMQ: a robust connection, opened within the connect timeout.

The worker, the webhook relay, the client and the bridge's event hub all connect here, so they share the timeout,
the heartbeat and the translation of a broker that cannot be reached into the tree's `BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError

from sdqueue.config import BrokerSettings
from sdqueue.contracts.errors import BrokerUnavailable

Prepare = Callable[[AbstractRobustConnection], Awaitable[None]]


async def connect(broker: BrokerSettings, *, prepare: Prepare | None = None) -> AbstractRobustConnection:
    """Open a robust connection (it reconnects and restores its channels after a broker restart) and run `prepare`
    on it (declare, bind, consume), both within `broker.connect_timeout_s`.

    Raises:
        BrokerUnavailable: the broker could not be reached, or `prepare` failed, in time; nothing stays open.
    """
    connection: AbstractRobustConnection | None = None
    try:
        async with asyncio.timeout(broker.connect_timeout_s):
            connection = await aio_pika.connect_robust(
                broker.url.get_secret_value(), heartbeat=broker.heartbeat_s, timeout=broker.connect_timeout_s
            )
            if prepare is not None:
                await prepare(connection)
    except (AMQPError, OSError, TimeoutError) as exc:
        if connection is not None:
            await connection.close()
        raise BrokerUnavailable("could not connect to the broker") from exc
    return connection
