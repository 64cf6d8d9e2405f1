"""The whole stack for end-to-end tests: real broker vhost, real SeaweedFS, the tiny model, a worker process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm
from pydantic import SecretStr

from sdqueue.client import SdqueueClient
from sdqueue.config import AuthSettings, BrokerSettings, RuntimeSettings, S3Settings, Settings, WebhookSettings
from sdqueue.contracts import JobEvent, parse_event
from sdqueue.contracts.topology import DEAD_QUEUE, EVENTS_EXCHANGE, job_events_pattern
from sdqueue.devstack.stack import start_worker, stop_process, with_fresh_secrets
from tests.plugins.services import SeaweedStack

WORKER_READY_TIMEOUT_S = 120.0


@dataclass
class WorkerProcess:
    """A `python -m sdqueue worker` child and its log."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        """The end of the worker's log, for failure messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class SigningKeys:
    """Private keys whose public halves the test worker trusts through its JWKS file, by `kid`."""

    rsa: rsa.RSAPrivateKey
    ed25519: ed25519.Ed25519PrivateKey
    rsa_kid: str = "test-rsa"
    ed25519_kid: str = "test-ed25519"


@pytest.fixture(scope="session")
def signing_keys() -> SigningKeys:
    """Fresh asymmetric keys for the session."""
    return SigningKeys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519=ed25519.Ed25519PrivateKey.generate(),
    )


def write_jwks(keys: SigningKeys, path: Path) -> Path:
    """Publish the public keys as a JWKS file, as an issuer would."""
    entries = [
        json.loads(RSAAlgorithm.to_jwk(keys.rsa.public_key())) | {"kid": keys.rsa_kid, "use": "sig"},
        json.loads(OKPAlgorithm.to_jwk(keys.ed25519.public_key())) | {"kid": keys.ed25519_kid, "use": "sig"},
    ]
    path.write_text(json.dumps({"keys": entries}))
    return path


# The session worker's one named adapter, a random LoRA for the tiny model.
SESSION_LORA = "tiny-style"


@pytest.fixture(scope="session")
def stack_settings(
    seaweed: SeaweedStack,
    amqp_url: str,
    tiny_model_dir: Path,
    signing_keys: SigningKeys,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """Settings shared by test workers and clients: the session's vhost, bucket, model, secret and JWKS, and one
    named LoRA (`SESSION_LORA`) so that the bridge and its page have an adapter to offer."""
    from sdqueue.worker.generate.tiny_adapters import build_tiny_lora

    state_dir = tmp_path_factory.mktemp("state")
    settings = make_stack_settings(
        amqp_url=amqp_url, s3=seaweed.s3, model_dir=tiny_model_dir, state_dir=state_dir, signing_keys=signing_keys
    )
    lora = build_tiny_lora(tiny_model_dir, state_dir / "adapters" / f"{SESSION_LORA}.safetensors", seed=7)
    return settings.model_copy(update={"adapters": {SESSION_LORA: lora}})


def make_stack_settings(
    *, amqp_url: str, s3: S3Settings, model_dir: Path, state_dir: Path, signing_keys: SigningKeys
) -> Settings:
    """Settings for a test stack: tiny model on CPU (threads pinned, so bytes repeat), fresh HS256 secret, JWKS."""
    base = Settings(
        state_dir=state_dir,
        model=str(model_dir),
        shutdown_grace_s=20.0,
        broker=BrokerSettings(url=amqp_url, publish_timeout_s=10.0),
        s3=s3,
        auth=AuthSettings(
            algorithms=("HS256", "RS256", "EdDSA"), jwks_file=write_jwks(signing_keys, state_dir / "jwks.json")
        ),
        runtime=RuntimeSettings(device="cpu", threads=2),
        # A secret but no allowed hosts: callbacks stay off unless a test allows its receiver.
        webhooks=WebhookSettings(secret=SecretStr(secrets.token_urlsafe(48))),
    )
    return with_fresh_secrets(base).model_copy(update={"s3": s3})


@pytest.fixture(scope="session")
def worker(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker process for the session; it must drain and exit 0 on SIGTERM at the end."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with log_path.open("wb") as log:
        running = WorkerProcess(process=start_worker(stack_settings, log=log), log_path=log_path)
        yield running
        code = stop_process(running.process, timeout_s=30.0)
    assert code == 0, f"worker exited {code} on SIGTERM:\n{running.log_tail()}"


@pytest_asyncio.fixture(scope="session")
async def client(stack_settings: Settings, worker: WorkerProcess) -> AsyncIterator[SdqueueClient]:
    """A connected client, returned once the worker consumes the default queue."""
    async with SdqueueClient(stack_settings, subject="tester") as connected:
        try:
            await connected.wait_for_workers("default", timeout_s=WORKER_READY_TIMEOUT_S)
        except Exception:
            pytest.fail(f"worker never became ready:\n{worker.log_tail()}")
        yield connected


@dataclass
class EventLog:
    """Every event of one job, as an independent observer on the topic exchange saw them."""

    events: list[JobEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: JobEvent) -> None:
        """Record an event and wake anyone waiting."""
        self.events.append(event)
        self.changed.set()

    async def wait_for(self, event_type: str, *, timeout_s: float) -> None:
        """Wait until an event of `event_type` has been seen (returns without raising on timeout)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not self.of_type(event_type):
                    self.changed.clear()
                    await self.changed.wait()

    def of_type(self, event_type: str) -> list[JobEvent]:
        """The events of one type, in arrival order."""
        return [event for event in self.events if event.type == event_type]


class BrokerProbe:
    """Looks at the broker from outside: a job's events on `sdqueue.events`, and what landed in `sdqueue.dead`."""

    def __init__(self, channel: AbstractChannel) -> None:
        self._channel = channel
        self._dead: dict[str, AbstractIncomingMessage] = {}

    async def watch(self, job_id: str) -> EventLog:
        """Start recording a job's events; call before publishing it."""
        log = EventLog()
        queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(await self._channel.get_exchange(EVENTS_EXCHANGE), routing_key=job_events_pattern(job_id))

        async def record(message: AbstractIncomingMessage) -> None:
            log.add(parse_event(message.body))

        await queue.consume(record, no_ack=True)
        return log

    async def replies(self) -> tuple[str, EventLog]:
        """A private reply queue (its name, for `reply_to`) and everything that arrives on it."""
        log = EventLog()
        queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)

        async def record(message: AbstractIncomingMessage) -> None:
            log.add(parse_event(message.body))

        await queue.consume(record, no_ack=True)
        return queue.name, log

    async def watch_all(self) -> dict[str, EventLog]:
        """Record every job's events from now on, keyed by job id."""
        logs: dict[str, EventLog] = {}
        queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(await self._channel.get_exchange(EVENTS_EXCHANGE), routing_key="job.#")

        async def record(message: AbstractIncomingMessage) -> None:
            event = parse_event(message.body)
            logs.setdefault(event.job_id, EventLog()).add(event)

        await queue.consume(record, no_ack=True)
        return logs

    async def dead_letters(self, *, settle_s: float = 1.0) -> dict[str, AbstractIncomingMessage]:
        """Everything in the dead queue so far (collected, so each message is seen once), after `settle_s`."""
        await asyncio.sleep(settle_s)
        queue = await self._channel.get_queue(DEAD_QUEUE, ensure=False)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            self._dead[message.message_id or f"no-id-{len(self._dead)}"] = message
        return dict(self._dead)

    async def dead_letter(self, job_id: str, *, timeout_s: float = 10.0) -> AbstractIncomingMessage | None:
        """The dead-lettered request with this job id, waiting up to `timeout_s` for it to arrive."""
        queue = await self._channel.get_queue(DEAD_QUEUE, ensure=False)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while job_id not in self._dead and asyncio.get_running_loop().time() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.1)
            elif message.message_id:
                self._dead[message.message_id] = message
        return self._dead.get(job_id)


@pytest_asyncio.fixture(scope="session")
async def probe(stack_settings: Settings, client: SdqueueClient) -> AsyncIterator[BrokerProbe]:
    """A broker observer on its own connection (the topology exists once the worker is ready)."""
    connection: AbstractRobustConnection = await aio_pika.connect_robust(stack_settings.broker.url.get_secret_value())
    async with connection:
        yield BrokerProbe(await connection.channel())
