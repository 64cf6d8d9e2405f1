"""What every job needs that the worker opened once at start, passed down to the stages' wiring."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractChannel, AbstractExchange

from sdqueue.config import Settings
from sdqueue.worker.batching import Batcher
from sdqueue.worker.control import JobRegistry
from sdqueue.worker.fairness import FairIntake
from sdqueue.worker.generate import ImageGenerator
from sdqueue.worker.metrics import WorkerMetrics
from sdqueue.worker.models import ModelCache
from sdqueue.worker.verify import VerificationKeys

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client


@dataclass(frozen=True, kw_only=True)
class Services:
    """Everything a job needs that the worker opened once at start."""

    settings: Settings
    keys: VerificationKeys
    models: ModelCache
    generators: Mapping[str, ImageGenerator]
    batchers: Mapping[str, Batcher]
    s3: S3Client
    channel: AbstractChannel
    events: AbstractExchange
    stop_generation: threading.Event
    registry: JobRegistry
    metrics: WorkerMetrics
    intake: FairIntake | None
