"""Prometheus metrics of one worker, served at `/metrics` on the health port.

Jobs by outcome and error code, queue wait, phase durations, batch sizes, images produced, loaded models and,
on CUDA, GPU memory. Rates (images/s, jobs/s) are the scraper's `rate()` of the counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sdqueue.contracts import TerminalEvent

SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PHASES = ("generate", "encode", "upload")


class WorkerMetrics:
    """The worker's metrics in a registry of their own (several workers may share a process in tests)."""

    def __init__(self, *, gpu_memory_bytes: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "sdqueue_jobs",
            "Jobs by terminal outcome and error code.",
            ["model", "outcome", "code"],
            registry=self.registry,
        )
        self.requeues = Counter("sdqueue_requeues", "Retryable failures requeued.", ["model"], registry=self.registry)
        self.overflowed = Counter(
            "sdqueue_overflowed",
            "Jobs moved to the overflow lane (caller over its share).",
            ["model"],
            registry=self.registry,
        )
        self.images = Counter("sdqueue_images", "Images generated and stored.", ["model"], registry=self.registry)
        self.queue_wait = Histogram(
            "sdqueue_queue_wait_seconds", "Publish to start of work.", buckets=SECONDS_BUCKETS, registry=self.registry
        )
        self.phase = Histogram(
            "sdqueue_phase_seconds",
            "Seconds per job phase.",
            ["phase"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "sdqueue_batch_images", "Images per pipeline call.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.models_loaded = Gauge(
            "sdqueue_model_loaded", "1 for each loaded model.", ["model"], registry=self.registry
        )
        self.webhooks = Counter(
            "sdqueue_webhooks",
            "Webhook outcomes: delivered, retry (one failed attempt), dead_lettered, refused.",
            ["outcome"],
            registry=self.registry,
        )
        if gpu_memory_bytes is not None:
            gauge = Gauge("sdqueue_gpu_memory_bytes", "GPU memory allocated by torch.", registry=self.registry)
            gauge.set_function(gpu_memory_bytes)

    def observe_outcome(self, event: TerminalEvent) -> None:
        """Count a job's terminal event, with its phase timings and images."""
        code = event.error.code.value if event.type != "succeeded" else ""
        self.jobs.labels(model=event.model, outcome=event.type, code=code).inc()
        if event.type != "succeeded":
            return
        self.images.labels(model=event.model).inc(len(event.images))
        if event.timings.queued is not None:
            self.queue_wait.observe(event.timings.queued)
        for phase in PHASES:
            seconds = getattr(event.timings, phase)
            if seconds is not None:
                self.phase.labels(phase=phase).observe(seconds)

    def count_webhook(self, outcome: str) -> None:
        """Count one webhook outcome reported by the in-process relay."""
        self.webhooks.labels(outcome=outcome).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
