"""The worker's lifecycle: load models, connect, declare, consume, guard each job, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from sdqueue import storage
from sdqueue.broker import connect
from sdqueue.config import S3Settings, Settings
from sdqueue.contracts import NamedAdapter
from sdqueue.contracts.errors import StorageError
from sdqueue.storage import make_s3_client
from sdqueue.worker.adapters import check_adapter_map
from sdqueue.worker.batching import Batcher
from sdqueue.worker.bucket import BucketObjects, BucketRecords
from sdqueue.worker.consume import Delivery, consume_jobs, declare_overflow, declare_topology
from sdqueue.worker.control import JobRegistry, apply_cancel, consume_control
from sdqueue.worker.fairness import FairIntake, take_in
from sdqueue.worker.generate import (
    ImageGenerator,
    describe_runtime,
    ensure_tiny_model,
    gpu_memory_probe,
    load_generator,
    warm_up,
)
from sdqueue.worker.health import Readiness, probe_storage, serve_health
from sdqueue.worker.heartbeat import heartbeats
from sdqueue.worker.logs import current_job_id
from sdqueue.worker.metrics import WorkerMetrics
from sdqueue.worker.models import CachedModel, ModelCache
from sdqueue.worker.outcome import Outcomes
from sdqueue.worker.pipeline import JobPath
from sdqueue.worker.publish import BrokerEvents
from sdqueue.worker.retry import BrokerRequeue
from sdqueue.worker.settle import settle
from sdqueue.worker.verify import Verification, VerificationKeys, load_keys, verify_request
from sdqueue.worker.webhooks import BrokerWebhooks, running_relay

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)


async def run_worker(settings: Settings) -> None:
    """Serve every configured model alias until SIGTERM or SIGINT, then drain and return."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdqueue-generate")
    try:
        log.info("runtime: %s", describe_runtime(settings.runtime))
        named_adapters = await check_adapter_map(settings.adapters, max_bytes=settings.limits.max_adapter_bytes)
        metrics = WorkerMetrics(gpu_memory_bytes=gpu_memory_probe(settings.runtime))
        models = await load_models(settings, executor=executor, metrics=metrics)
        generators = {alias: CachedModel(models, alias) for alias in models.aliases}
        s3 = make_s3_client(settings.s3)
        await wait_for_storage(s3, s3_settings=settings.s3)
        connection = await connect(settings.broker)
        batching = running_batchers(generators, executor=executor, settings=settings, metrics=metrics)
        async with connection, batching as batchers:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=settings.broker.prefetch)
            topology = await declare_topology(
                channel, aliases=generators.keys(), delivery_limit=settings.broker.delivery_limit
            )
            # The overflow lanes get a channel of their own so their prefetch never crowds out the main lanes.
            overflow_channel = await connection.channel()
            await overflow_channel.set_qos(prefetch_count=settings.fairness.overflow_prefetch)
            overflow = await declare_overflow(
                overflow_channel, aliases=generators.keys(), delivery_limit=settings.broker.delivery_limit
            )
            job_path = JobPath(
                settings=settings,
                outcomes=Outcomes(
                    records=BucketRecords(s3, s3=settings.s3, default_issuer=settings.auth.issuers[0]),
                    events=BrokerEvents(events=topology.events, channel=channel, broker=settings.broker),
                    webhooks=BrokerWebhooks(
                        channel, webhooks=settings.webhooks, timeout_s=settings.broker.publish_timeout_s
                    ),
                    metrics=metrics,
                ),
                objects=BucketObjects(s3, s3=settings.s3),
                requeue=BrokerRequeue(channel, broker=settings.broker),
                generators=batchers,
                registry=JobRegistry(),
                metrics=metrics,
                stop_generation=threading.Event(),
            )
            relay = running_relay(connection, webhooks=settings.webhooks, on_outcome=metrics.count_webhook)
            async with relay, health_endpoint(settings, connection=connection, s3=s3, metrics=metrics):
                serving = Serving(
                    job_path=job_path,
                    keys=load_keys(settings.auth),
                    intake=FairIntake(settings.fairness) if settings.fairness.enabled else None,
                    models=models,
                    named_adapters=named_adapters,
                    channel=channel,
                    events=topology.events,
                )
                await serving.serve(topology.requests, overflow=overflow)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    log.info("worker %s stopped", settings.worker_name)


@contextlib.asynccontextmanager
async def running_batchers(
    generators: Mapping[str, ImageGenerator],
    *,
    executor: ThreadPoolExecutor,
    settings: Settings,
    metrics: WorkerMetrics,
) -> AsyncIterator[dict[str, Batcher]]:
    """One batcher per model alias, each forming batches in its own task until the worker stops."""
    batchers = {
        alias: Batcher(
            generator,
            executor=executor,
            batching=settings.batching,
            on_batch=metrics.batch_images.observe,
            promote_after_s=settings.fairness.promote_after_s,
            mixed_loras=settings.runtime.mixed_lora_batches,
        )
        for alias, generator in generators.items()
    }
    tasks = [asyncio.create_task(batcher.run(), name=f"batcher:{alias}") for alias, batcher in batchers.items()]
    try:
        yield batchers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_for_storage(client: S3Client, *, s3_settings: S3Settings) -> None:
    """Start only once the bucket answers, waiting out an outage of up to `outage_budget_s`.

    Raises:
        StorageError: the bucket stayed unreachable (or missing) for the whole budget.
    """
    deadline = time.monotonic() + s3_settings.outage_budget_s
    while True:
        try:
            await storage.check_bucket(client, bucket=s3_settings.bucket)
        except StorageError as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("waiting for storage: %s", exc.message)
            await asyncio.sleep(2.0)
        else:
            return


@contextlib.asynccontextmanager
async def health_endpoint(
    settings: Settings, *, connection: AbstractRobustConnection, s3: S3Client, metrics: WorkerMetrics
) -> AsyncIterator[None]:
    """Serve /healthz, /readyz and /metrics (when a port is configured) with a background storage probe."""
    if settings.health_port is None:
        yield
        return
    readiness = Readiness(is_broker_up=lambda: connection.connected.is_set() and not connection.is_closed)
    probe = asyncio.create_task(probe_storage(readiness, client=s3, bucket=settings.s3.bucket))
    try:
        async with serve_health(
            readiness, metrics=metrics.render, host=settings.health_host, port=settings.health_port
        ):
            yield
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe


async def load_models(settings: Settings, *, executor: ThreadPoolExecutor, metrics: WorkerMetrics) -> ModelCache:
    """Load every served alias once on the generation thread (the tiny default is built on first use), within the
    memory budget; models unloaded by the budget come back on their next job."""

    def load(alias: str, source: str) -> ImageGenerator:
        if Path(source) == settings.tiny_model_dir:
            ensure_tiny_model(settings.tiny_model_dir)
        log.info("loading model %s from %s", alias, source)
        generator = load_generator(source, runtime=settings.runtime)
        started = time.monotonic()
        warm_up(generator, runtime=settings.runtime, batch_images=settings.batching.max_images)
        log.info("model %s warmed up in %.2fs", alias, time.monotonic() - started)
        return generator

    def on_change(loaded: tuple[str, ...]) -> None:
        for alias in settings.model_sources():
            metrics.models_loaded.labels(model=alias).set(1 if alias in loaded else 0)

    budget_mb = settings.runtime.model_memory_mb
    cache = ModelCache(
        settings.model_sources(),
        load=load,
        budget_bytes=None if budget_mb is None else budget_mb * 2**20,
        on_change=on_change,
    )
    await asyncio.get_running_loop().run_in_executor(executor, cache.load_all)
    return cache


@dataclass(frozen=True, kw_only=True)
class Serving:
    """The consuming side: intake (verify once, fairness), one task per admitted job, and the drain on a signal."""

    job_path: JobPath
    keys: VerificationKeys
    intake: FairIntake | None
    models: ModelCache
    named_adapters: tuple[NamedAdapter, ...]
    channel: AbstractChannel
    events: AbstractExchange

    async def serve(self, queues: Mapping[str, AbstractQueue], *, overflow: Mapping[str, AbstractQueue]) -> None:
        """Consume both lanes until a stop signal, then drain: in-flight jobs get the grace period, the rest requeue."""
        settings = self.job_path.settings
        stopping = asyncio.Event()
        _install_signal_handlers(stopping)
        in_flight: set[asyncio.Task[None]] = set()

        async def on_delivery(delivery: Delivery) -> None:
            if stopping.is_set():
                await settle(delivery.message, "requeue", job_id=delivery.job_id)
                return
            task = await self.take_in(delivery)
            if task is not None:
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)

        async def on_control(message: AbstractIncomingMessage) -> None:
            apply_cancel(message, registry=self.job_path.registry, auth=settings.auth, keys=self.keys)

        # Held for the whole serve: aio-pika restores only queues that are still referenced after a reconnect.
        control_queue = await consume_control(self.channel, worker_name=settings.worker_name, on_message=on_control)
        consumers = [
            *[
                (queue, await consume_jobs(queue, alias=alias, on_delivery=on_delivery))
                for alias, queue in queues.items()
            ],
            *[
                (queue, await consume_jobs(queue, alias=alias, on_delivery=on_delivery, lane="overflow"))
                for alias, queue in overflow.items()
            ],
        ]
        log.info("worker %s ready; serving %s", settings.worker_name, ", ".join(sorted(queues)))
        beating = heartbeats(
            settings,
            models=self.models,
            adapters=self.named_adapters,
            events=self.events,
            in_flight=in_flight,
            stopping=stopping,
        )
        async with beating:
            await stopping.wait()
        log.info("stopping: intake closed, %d job(s) in flight", len(in_flight))
        for queue, tag in consumers:
            await queue.cancel(tag)
        await self.drain(in_flight)
        log.debug("control queue %s released", control_queue.name)

    async def take_in(self, delivery: Delivery) -> asyncio.Task[None] | None:
        """Verify the token once, apply fairness, and start the job's task (None when it moved to the overflow lane)."""
        auth = self.job_path.settings.auth
        verification = verify_request(
            delivery.authorization, body=delivery.body, job_id=delivery.job_id or "", auth=auth, keys=self.keys
        )
        overflowed = self.job_path.metrics.overflowed.labels(model=delivery.alias).inc
        on_settled = await take_in(
            delivery, verification, intake=self.intake, requeue=self.job_path.requeue, on_overflow=overflowed
        )
        if on_settled is None:
            return None
        task = asyncio.create_task(self.handle(delivery, verification), name=f"job:{delivery.job_id}")
        task.add_done_callback(lambda _: on_settled())
        return task

    async def handle(self, delivery: Delivery, verification: Verification) -> None:
        """Run one job and settle its delivery, whatever happened inside; a cancelled task requeues it."""
        current_job_id.set(delivery.job_id)  # this task's own context: every log line of the job carries its id
        try:
            settlement = await self.job_path.settle_as(delivery, verification)
        except asyncio.CancelledError:
            await asyncio.shield(settle(delivery.message, "requeue", job_id=delivery.job_id))
            raise
        await settle(delivery.message, settlement, job_id=delivery.job_id)

    async def drain(self, in_flight: set[asyncio.Task[None]]) -> None:
        """Let running jobs finish within the grace period; interrupt and requeue whatever is left."""
        if not in_flight:
            return
        _, pending = await asyncio.wait(set(in_flight), timeout=self.job_path.settings.shutdown_grace_s)
        if pending:
            log.warning("grace period over: interrupting %d job(s); they will be redelivered", len(pending))
            self.job_path.stop_generation.set()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _install_signal_handlers(stopping: asyncio.Event) -> None:
    """First SIGTERM/SIGINT drains; a second exits at once and leaves the broker to redeliver."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second signal %s: exiting now; unacked jobs will be redelivered", signum)
            os._exit(128 + signum)
        log.info("signal %s: draining", signum)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
