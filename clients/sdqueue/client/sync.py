"""A blocking wrapper around `SdqueueClient` for scripts and synchronous code.

The async client runs on a private event loop in a background thread, so heartbeats keep flowing between calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from sdqueue.client.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.contracts import GenerationRequest, ImageInfo, InitImageKey, SucceededEvent, TerminalEvent

T = TypeVar("T")


class SyncClient:
    """Blocking twin of `SdqueueClient`: `with SyncClient(settings) as client: client.generate(request)`."""

    def __init__(self, settings: Settings, *, subject: str = "sdqueue-client") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sdqueue-client", daemon=True)
        self._thread.start()
        self._client = SdqueueClient(settings, subject=subject)

    def __enter__(self) -> Self:
        self._run(self._client.connect())
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        if self._thread.is_alive():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def submit(self, request: GenerationRequest, *, token: str | None = None) -> str:
        """See `SdqueueClient.submit`."""
        return self._run(self._client.submit(request, token=token))

    def wait(self, job_id: str, *, timeout_s: float = 600.0) -> TerminalEvent:
        """See `SdqueueClient.wait`."""
        return self._run(self._client.wait(job_id, timeout_s=timeout_s))

    def generate(
        self, request: GenerationRequest, *, token: str | None = None, timeout_s: float = 600.0
    ) -> SucceededEvent:
        """See `SdqueueClient.generate`."""
        return self._run(self._client.generate(request, token=token, timeout_s=timeout_s))

    def fetch_image(self, image: ImageInfo) -> bytes:
        """See `SdqueueClient.fetch_image`."""
        return self._run(self._client.fetch_image(image))

    def read_record(self, job_id: str) -> TerminalEvent | None:
        """See `SdqueueClient.read_record`."""
        return self._run(self._client.read_record(job_id))

    def upload_init_image(self, job_id: str, data: bytes, *, extension: str) -> InitImageKey:
        """See `SdqueueClient.upload_init_image`."""
        return self._run(self._client.upload_init_image(job_id, data, extension=extension))

    def upload_mask_image(self, job_id: str, data: bytes, *, extension: str) -> InitImageKey:
        """See `SdqueueClient.upload_mask_image`."""
        return self._run(self._client.upload_mask_image(job_id, data, extension=extension))

    def wait_for_workers(self, model: str, *, timeout_s: float = 60.0) -> int:
        """See `SdqueueClient.wait_for_workers`."""
        return self._run(self._client.wait_for_workers(model, timeout_s=timeout_s))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
