"""The async sdqueue client: publish signed requests, follow their events, fetch their images."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

import aio_pika
import aiormq
import httpx
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, ChannelNotFoundEntity, DeliveryError, PublishError
from pydantic import ValidationError

from sdqueue import broker
from sdqueue.client import storage
from sdqueue.client.follow import follow_job
from sdqueue.client.jobs import request_body, request_message
from sdqueue.client.tokens import bearer, mint_token
from sdqueue.config import BrokerSettings, Settings
from sdqueue.contracts import (
    HEARTBEAT_PATTERN,
    SCOPE_CANCEL,
    CancelCommand,
    CancelledEvent,
    FailedEvent,
    GenerationRequest,
    ImageInfo,
    InitImageKey,
    JobEvent,
    SucceededEvent,
    TerminalEvent,
    WorkerHeartbeat,
    is_terminal,
    parse_event,
    utc_now,
)
from sdqueue.contracts.errors import (
    BrokerUnavailable,
    JobFailed,
    RequestRefused,
    StorageError,
    UnroutableRequest,
    UsageError,
    WaitTimeout,
)
from sdqueue.contracts.topology import (
    AUTHORIZATION_HEADER,
    CONTROL_EXCHANGE,
    EVENTS_EXCHANGE,
    EXCHANGE_TYPES,
    REQUESTS_EXCHANGE,
    job_events_pattern,
    requests_queue,
)
from sdqueue.storage import make_s3_client

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)

NO_ROUTE = 312
REPLY_QUEUE_PREFIX = "sdqueue.client."
T = TypeVar("T")


class SdqueueClient:
    """One broker connection with publisher confirms and a private reply queue, plus S3 and HTTP clients.

    Use as `async with SdqueueClient(settings) as client:`.
    """

    def __init__(self, settings: Settings, *, subject: str = "sdqueue-client") -> None:
        self._settings = settings
        self._subject = subject
        self._watchers: dict[str, asyncio.Queue[JobEvent]] = {}
        self._bound: set[str] = set()
        self._submitted: set[str] = set()
        self._recoveries: set[asyncio.Task[None]] = set()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._replies: AbstractQueue | None = None
        self._s3: S3Client = make_s3_client(settings.s3)
        self._http = httpx.AsyncClient(timeout=settings.s3.timeout_s)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to the broker and start listening on a private, exclusive reply queue.

        Raises:
            BrokerUnavailable: the broker could not be reached in time.
        """
        try:
            self._connection = await broker.connect(self._settings.broker, prepare=self._listen)
        except BrokerUnavailable:
            await self.close()
            raise
        self._connection.reconnect_callbacks.add(self._on_reconnect)

    async def _listen(self, connection: AbstractRobustConnection) -> None:
        """Open the publishing channel, make sure the exchanges exist, and consume a private reply queue."""
        self._channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        for name in (REQUESTS_EXCHANGE, CONTROL_EXCHANGE):
            # Before any worker has declared it, a publish would make the broker close the channel.
            exchange_type = aio_pika.ExchangeType(EXCHANGE_TYPES[name])
            await self._channel.declare_exchange(name, exchange_type, durable=True)
        # A client-chosen name (not a server-named amq.gen-*) can be re-declared after a reconnect, so
        # reply_to addresses of requests already in flight stay valid across a broker restart.
        self._replies = await self._channel.declare_queue(
            f"{REPLY_QUEUE_PREFIX}{uuid.uuid4().hex}", exclusive=True, auto_delete=True
        )
        await self._replies.consume(self._on_event, no_ack=True)

    async def close(self) -> None:
        """Close the broker connection and the HTTP client."""
        for task in self._recoveries:
            task.cancel()
        await asyncio.gather(*self._recoveries, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        await self._http.aclose()

    async def submit(self, request: GenerationRequest, *, token: str | None = None, subject: str | None = None) -> str:
        """Publish a request with mandatory routing and wait for the broker's confirm; returns the job id.

        Without `token`, one is minted for `subject` (default: this client's) with the configured HS256 secret; a
        token minted elsewhere must hash `request_body(request)`.

        Raises:
            UnroutableRequest: no worker queue serves `request.model`.
            RequestRefused: the broker refused the message (queue full).
            BrokerUnavailable: no confirm in time.
        """
        body = request_body(request)
        if token is None:
            token = mint_token(body, job_id=request.job_id, subject=subject or self._subject, auth=self._settings.auth)
        self._watchers.setdefault(request.job_id, asyncio.Queue())
        self._submitted.add(request.job_id)
        message = request_message(body, job_id=request.job_id, token=token, reply_to=self._reply_queue().name)
        await self.publish_raw(message, routing_key=request.model)
        return request.job_id

    async def publish_raw(self, message: aio_pika.Message, *, routing_key: str) -> None:
        """Publish an already built request message (any body, any headers) to the requests exchange.

        Raises:
            UnroutableRequest, RequestRefused, BrokerUnavailable: as for `submit`.
        """
        await self._publish(REQUESTS_EXCHANGE, message, routing_key=routing_key)

    async def _publish(self, exchange_name: str, message: aio_pika.Message, *, routing_key: str) -> None:
        exchange = await self._exchange(exchange_name)
        try:
            async with asyncio.timeout(self._settings.broker.publish_timeout_s):
                await exchange.publish(message, routing_key=routing_key, mandatory=True)
        except PublishError as exc:
            if exc.message is not None and getattr(exc.frame, "reply_code", None) == NO_ROUTE:
                raise UnroutableRequest(routing_key) from exc
            raise RequestRefused("the broker refused the request") from exc
        except DeliveryError as exc:
            raise RequestRefused("the broker refused the request") from exc
        except (AMQPError, ChannelInvalidStateError, OSError, TimeoutError) as exc:
            # ChannelInvalidStateError: the channel closed under us and is being reopened (a RuntimeError).
            raise BrokerUnavailable("the broker did not confirm the request") from exc

    async def cancel(
        self, job_id: str, *, token: str | None = None, subject: str | None = None, reason: str = ""
    ) -> bool:
        """Ask every worker to cancel a job; returns False when no worker listens on `sdqueue.control`.

        A queued job ends `cancelled` when a worker takes it; a running one stops at its next step. Only the
        job's own subject (or a token with `sdqueue:admin`) can cancel it.

        Raises:
            BrokerUnavailable: no confirm in time.
        """
        body = CancelCommand(job_id=job_id, reason=reason).model_dump_json().encode()
        if token is None:
            token = mint_token(
                body, job_id=job_id, subject=subject or self._subject, auth=self._settings.auth, scopes=(SCOPE_CANCEL,)
            )
        message = aio_pika.Message(
            body,
            content_type="application/json",
            message_id=job_id,
            timestamp=utc_now(),
            headers={AUTHORIZATION_HEADER: bearer(token)},
        )
        try:
            await self._publish(CONTROL_EXCHANGE, message, routing_key="")
        except UnroutableRequest:
            return False
        return True

    async def events(self, job_id: str, *, timeout_s: float = 600.0) -> AsyncIterator[JobEvent]:
        """Yield the job's events as they arrive, ending with its terminal event (from the broker or the bucket).

        Raises:
            WaitTimeout: no terminal event within `timeout_s`.
        """
        queue = await self._watch(job_id)
        last: JobEvent | None = None
        try:
            async for event in follow_job(
                queue,
                read_record=lambda: self._record_if_reachable(job_id),
                timeout_s=timeout_s,
                allow_terminal_events=True,  # `_on_event` takes only what a worker's broker user sent
            ):
                if event is not None:
                    last = event
                    yield event
        finally:
            await self._unwatch(job_id)
        if last is None or not is_terminal(last):
            raise WaitTimeout(f"job {job_id} did not finish in time")

    async def wait(self, job_id: str, *, timeout_s: float = 600.0) -> TerminalEvent:
        """Return the job's terminal event (from the broker, or its record in the bucket).

        Raises:
            WaitTimeout: the job did not finish within `timeout_s`.
        """
        async for event in self.events(job_id, timeout_s=timeout_s):
            if isinstance(event, SucceededEvent | FailedEvent | CancelledEvent):
                return event
        raise WaitTimeout(f"job {job_id} did not finish")

    async def generate(
        self, request: GenerationRequest, *, token: str | None = None, timeout_s: float = 600.0
    ) -> SucceededEvent:
        """Submit a request and wait for its images.

        Raises:
            JobFailed: the job failed or was cancelled.
            WaitTimeout, UnroutableRequest, RequestRefused, BrokerUnavailable: see `submit` and `wait`.
        """
        await self.submit(request, token=token)
        event = await self.wait(request.job_id, timeout_s=timeout_s)
        if not isinstance(event, SucceededEvent):
            raise JobFailed(event)
        return event

    async def fetch_image(self, image: ImageInfo) -> bytes:
        """Download one image by its event URL, checked against its sha256."""
        return await storage.fetch_image(self._http, image)

    async def read_record(self, job_id: str) -> TerminalEvent | None:
        """The job's stored terminal event, or None if it has not finished."""
        return await storage.read_record(self._s3, s3=self._settings.s3, job_id=job_id)

    async def upload_init_image(self, job_id: str, data: bytes, *, extension: str) -> InitImageKey:
        """Upload an init image for an img2img or inpaint job and return its reference."""
        return await storage.upload_init_image(
            self._s3, s3=self._settings.s3, job_id=job_id, data=data, extension=extension
        )

    async def upload_mask_image(self, job_id: str, data: bytes, *, extension: str) -> InitImageKey:
        """Upload an inpaint job's mask (white repaints, black keeps) and return its reference for `mask_image`."""
        return await storage.upload_mask_image(
            self._s3, s3=self._settings.s3, job_id=job_id, data=data, extension=extension
        )

    async def upload_adapter(self, data: bytes) -> storage.StoredAdapter:
        """Upload a safetensors adapter to `adapters/<sha256>.safetensors`; a request names its key and sha256."""
        return await storage.upload_adapter(self._s3, s3=self._settings.s3, data=data)

    async def delete_init_image(self, reference: InitImageKey) -> None:
        """Remove an uploaded init image whose job was not queued after all (best effort)."""
        await storage.delete_init_image(self._s3, s3=self._settings.s3, reference=reference)

    async def wait_for_workers(self, model: str, *, timeout_s: float = 60.0, minimum: int = 1) -> int:
        """Wait until at least `minimum` workers consume the model's queue; returns the consumer count.

        Raises:
            WaitTimeout: too few workers within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            count = await self._consumer_count(requests_queue(model))
            if count >= minimum:
                return count
            await asyncio.sleep(0.2)
        raise WaitTimeout(f"no worker serves {model!r}")

    async def fleet(
        self, *, listen_s: float = 12.0, until: Callable[[list[WorkerHeartbeat]], bool] | None = None
    ) -> list[WorkerHeartbeat]:
        """The workers heard from within `listen_s` (a heartbeat interval and a bit), each by its latest heartbeat;
        sooner once `until` holds for the workers heard so far."""
        connection = _require(self._connection)
        latest: dict[str, WorkerHeartbeat] = {}
        enough = asyncio.Event()

        def heard() -> list[WorkerHeartbeat]:
            return sorted(latest.values(), key=lambda heartbeat: heartbeat.worker)

        async def on_heartbeat(message: AbstractIncomingMessage) -> None:
            if not sent_by_worker(message, broker=self._settings.broker):
                return
            try:
                heartbeat = WorkerHeartbeat.model_validate_json(message.body)
            except ValidationError:
                log.warning("ignoring a malformed heartbeat")
                return
            latest[heartbeat.worker] = heartbeat
            if until is not None and until(heard()):
                enough.set()

        async with await connection.channel() as channel:
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(await channel.get_exchange(EVENTS_EXCHANGE, ensure=False), routing_key=HEARTBEAT_PATTERN)
            await queue.consume(on_heartbeat, no_ack=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), timeout=listen_s)
        return heard()

    async def is_routable(self, model: str) -> bool:
        """Whether a request for `model` would be routed now: its queue exists (a worker declared it).

        Raises:
            BrokerUnavailable: the broker did not answer.
        """
        try:
            return await self._queue_state(requests_queue(model)) is not None
        except (AMQPError, ChannelInvalidStateError, OSError) as exc:
            raise BrokerUnavailable("could not ask the broker about the model's queue") from exc

    async def _consumer_count(self, queue_name: str) -> int:
        state = await self._queue_state(queue_name)
        return 0 if state is None else int(state.consumer_count or 0)

    async def _queue_state(self, queue_name: str) -> aiormq.spec.Queue.DeclareOk | None:
        """Inspect a queue without declaring it (None if it is absent): a passive declare on a throwaway channel."""
        connection = _require(self._connection)
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
        except ChannelNotFoundEntity:
            return None
        else:
            await channel.close()
            return queue.declaration_result

    async def _watch(self, job_id: str) -> asyncio.Queue[JobEvent]:
        """Start receiving a job's events; for a job this client did not submit, bind to its routing keys."""
        queue = self._watchers.setdefault(job_id, asyncio.Queue())
        if job_id not in self._bound and job_id not in self._submitted:
            await self._reply_queue().bind(
                await self._exchange(EVENTS_EXCHANGE), routing_key=job_events_pattern(job_id)
            )
            self._bound.add(job_id)
        return queue

    async def _unwatch(self, job_id: str) -> None:
        self._watchers.pop(job_id, None)
        self._submitted.discard(job_id)
        if job_id in self._bound:
            self._bound.discard(job_id)
            events = await self._exchange(EVENTS_EXCHANGE)
            await self._reply_queue().unbind(events, routing_key=job_events_pattern(job_id))

    async def _record_if_reachable(self, job_id: str) -> TerminalEvent | None:
        """The record, or None while it is missing or the bucket is unreachable (waiting goes on either way)."""
        try:
            return await self.read_record(job_id)
        except StorageError as exc:
            log.debug("job %s: record not readable yet: %s", job_id, exc)
            return None

    def _on_reconnect(self, _: AbstractRobustConnection | None, /) -> None:
        """Events published while the reply queue was gone are lost; recover those jobs from their records."""
        task = asyncio.create_task(self._recover_from_records())
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)

    async def _recover_from_records(self) -> None:
        for job_id, queue in list(self._watchers.items()):
            record = await self._record_if_reachable(job_id)
            if record is not None:
                queue.put_nowait(record)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        if not sent_by_worker(message, broker=self._settings.broker):
            return
        try:
            event = parse_event(message.body)
        except ValidationError:
            log.warning("ignoring a reply that is not an sdqueue event")
            return
        queue = self._watchers.get(event.job_id)
        if queue is not None:
            queue.put_nowait(event)

    async def _exchange(self, name: str) -> AbstractExchange:
        return await _require(self._channel).get_exchange(name, ensure=False)

    def _reply_queue(self) -> AbstractQueue:
        return _require(self._replies)


def sent_by_worker(message: AbstractIncomingMessage, *, broker: BrokerSettings) -> bool:
    """Whether a worker sent the message: the broker checked its `user_id` against the sender's user.

    Messages of anyone else (a producer that may publish where it should not) are dropped, with a warning.
    """
    if message.user_id in broker.worker_users:
        return True
    log.warning("ignoring an event from broker user %r, not a worker user", message.user_id)
    return False


def _require(value: T | None) -> T:
    if value is None:
        raise UsageError("the client is not connected; use `async with SdqueueClient(settings)`")
    return value
