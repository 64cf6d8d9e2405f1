"""An isolated stack per test: its own vhost and bucket, and worker processes the test starts (and may break)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import aio_pika
import pytest
import pytest_asyncio

from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.contracts.topology import requests_queue
from sdqueue.devstack import SeaweedServer, create_vhost, delete_vhost
from sdqueue.devstack.stack import start_worker, stop_process, worker_environment
from tests.plugins.services import SeaweedStack
from tests.plugins.stack import BrokerProbe, SigningKeys, WorkerProcess, make_stack_settings

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

READY_TIMEOUT_S = 120.0
REPO_ROOT = Path(__file__).resolve().parents[2]
FAULTY_WORKER = (sys.executable, "-m", "tests.plugins.faulty_worker")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def updated(settings: Settings, **groups: dict[str, Any]) -> Settings:
    """Copy of `settings` with fields of nested groups replaced: `updated(s, limits={"max_generate_s": 1.5})`."""
    changes = {name: getattr(settings, name).model_copy(update=values) for name, values in groups.items()}
    return settings.model_copy(update=changes)


@dataclass
class IsolatedStack:
    """Settings for one isolated stack, and the workers started on it (each with its own log)."""

    settings: Settings
    log_dir: Path
    s3_client: S3Client
    workers: list[WorkerProcess] = field(default_factory=list)
    servers: list[SeaweedServer] = field(default_factory=list)

    def track(self, server: SeaweedServer) -> SeaweedServer:
        """Stop this extra SeaweedFS at teardown, whatever the test did with it."""
        self.servers.append(server)
        return server

    def start_worker(
        self, name: str, settings: Settings | None = None, *, faults: Mapping[str, str] | None = None
    ) -> WorkerProcess:
        """Start `python -m sdqueue worker` named `name` (that name appears in its events).

        With `faults` (variables of `tests.plugins.faulty_worker`), the same worker with those faults injected.
        """
        log_path = self.log_dir / f"{name}.log"
        settings = settings or self.settings
        named = {"SDQUEUE_WORKER_NAME": name}
        with log_path.open("wb") as log:
            if faults:
                process = start_faulty_worker(settings, log=log, extra_env={**named, **faults})
            else:
                process = start_worker(settings, log=log, extra_env=named)
        worker = WorkerProcess(process=process, log_path=log_path)
        self.workers.append(worker)
        return worker

    def kill(self, worker: WorkerProcess) -> None:
        """kill -9: no drain, no settle; the broker must redeliver what it held."""
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)

    def output_keys(self, job_id: str) -> list[str]:
        """Object keys under the job's output prefix."""
        listing = self.s3_client.list_objects_v2(Bucket=self.settings.s3.bucket, Prefix=f"outputs/{job_id}/")
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def logs(self) -> str:
        """Every worker's log tail, for failure messages."""
        return "\n".join(f"--- {w.log_path.name}\n{w.log_tail()}" for w in self.workers)


def start_faulty_worker(settings: Settings, *, log: IO[bytes], extra_env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Run `python -m tests.plugins.faulty_worker` the way `start_worker` runs the real one."""
    return subprocess.Popen(
        FAULTY_WORKER,
        cwd=REPO_ROOT,
        env=worker_environment(settings, extra=extra_env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture
def isolated(
    seaweed: SeaweedStack,
    s3_client: S3Client,
    amqp_url: str,
    tiny_model_dir: Path,
    signing_keys: SigningKeys,
    tmp_path: Path,
) -> Iterator[IsolatedStack]:
    """A fresh vhost and bucket on the session's broker and SeaweedFS; every worker is stopped afterwards."""
    suffix = secrets.token_hex(4)
    vhost_url = create_vhost(f"sdqueue-fault-{suffix}")
    bucket = f"fault-{suffix}"
    s3_client.create_bucket(Bucket=bucket)
    (tmp_path / "state").mkdir()
    settings = make_stack_settings(
        amqp_url=vhost_url,
        s3=seaweed.s3.model_copy(update={"bucket": bucket}),
        model_dir=tiny_model_dir,
        state_dir=tmp_path / "state",
        signing_keys=signing_keys,
    )
    stack = IsolatedStack(settings=settings, log_dir=tmp_path, s3_client=s3_client)
    yield stack
    for worker in stack.workers:
        if worker.process.poll() is None:
            stop_process(worker.process, timeout_s=10.0)
    for server in stack.servers:
        server.stop()
    delete_vhost(vhost_url.rsplit("/", 1)[-1])


@pytest_asyncio.fixture
async def isolated_client(isolated: IsolatedStack) -> AsyncIterator[SdqueueClient]:
    """A client on the isolated stack (it does not wait for workers: tests start them)."""
    async with SdqueueClient(isolated.settings, subject="tester") as client:
        yield client


@pytest_asyncio.fixture
async def isolated_probe(isolated: IsolatedStack) -> AsyncIterator[BrokerProbe]:
    """A broker observer on the isolated vhost."""
    connection = await aio_pika.connect_robust(isolated.settings.broker.url.get_secret_value())
    async with connection:
        yield BrokerProbe(await connection.channel())


async def queue_depth(settings: Settings, alias: str = "default") -> int:
    """Ready messages in an alias's request queue (unacked ones are not counted)."""
    connection = await aio_pika.connect(settings.broker.url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(requests_queue(alias), passive=True)
        return int(queue.declaration_result.message_count or 0)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def rabbitmqctl(*args: str) -> None:
    """Run rabbitmqctl (the fault suite restarts the broker app)."""
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)
