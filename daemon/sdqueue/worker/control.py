"""Cancel commands from `sdqueue.control`, and the registry that applies them to this worker's jobs.

Every worker hears every command (fanout). A running job stops at its next step; a job not started yet is
remembered for a while and cancelled when it arrives, but only for its own caller or an admin.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from sdqueue.config import AuthSettings
from sdqueue.contracts import SCOPE_ADMIN, SCOPE_CANCEL, CancelCommand
from sdqueue.contracts.errors import SdqueueError
from sdqueue.contracts.topology import AUTHORIZATION_HEADER, CONTROL_EXCHANGE
from sdqueue.worker.verify import Caller, VerificationKeys, verify_token

log = logging.getLogger(__name__)

PENDING_CANCEL_TTL_S = 3600.0
CancelOutcome = Literal["stopping", "refused", "remembered"]
MAX_PENDING_CANCELS = 10_000
MAX_COMMAND_BYTES = 4096


@dataclass(frozen=True, kw_only=True)
class CancelRequest:
    """A verified cancel: which job, asked by whom."""

    job_id: str
    caller: Caller
    is_admin: bool

    def may_cancel(self, owner: Caller) -> bool:
        """Only the job's own caller (same issuer and subject), or an admin, may cancel it."""
        return self.is_admin or self.caller == owner

    @property
    def pending_key(self) -> tuple[str, Caller | None]:
        """Pending cancels are kept per (job, caller), so nobody's cancel replaces the owner's; admins' share one."""
        return (self.job_id, None if self.is_admin else self.caller)


@dataclass
class _Running:
    owner: Caller
    stop: threading.Event


class JobRegistry:
    """This worker's running jobs and the cancels that arrived before their job did. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._pending: OrderedDict[tuple[str, Caller | None], float] = OrderedDict()

    def start(self, job_id: str, *, owner: Caller) -> threading.Event | None:
        """Register a job about to run and return its stop flag; None if its owner's or an admin's cancel is pending."""
        with self._lock:
            now = time.monotonic()
            expiries = [self._pending.pop(key, 0.0) for key in ((job_id, owner), (job_id, None))]
            if any(now < expiry for expiry in expiries):
                return None
            stop = threading.Event()
            self._running[job_id] = _Running(owner=owner, stop=stop)
            return stop

    def finish(self, job_id: str) -> None:
        """Forget a job that ended."""
        with self._lock:
            self._running.pop(job_id, None)

    def cancel(self, request: CancelRequest) -> CancelOutcome:
        """Stop the job if it runs here and the caller may, refuse it if the caller may not, else remember it."""
        with self._lock:
            running = self._running.get(request.job_id)
            if running is not None:
                if not request.may_cancel(running.owner):
                    return "refused"
                running.stop.set()
                return "stopping"
            self._remember(request)
            return "remembered"

    def _remember(self, request: CancelRequest) -> None:
        self._pending[request.pending_key] = time.monotonic() + PENDING_CANCEL_TTL_S
        self._pending.move_to_end(request.pending_key)
        while len(self._pending) > MAX_PENDING_CANCELS:
            self._pending.popitem(last=False)


def parse_cancel(message: AbstractIncomingMessage, *, auth: AuthSettings, keys: VerificationKeys) -> CancelRequest:
    """Verify and decode one control message.

    Raises:
        SdqueueError: the body or its token does not hold (the command is dropped; there is no job to report on).
    """
    if len(message.body) > MAX_COMMAND_BYTES:
        raise ValueError("control message too large")
    command = CancelCommand.model_validate_json(message.body)
    authorization = (message.headers or {}).get(AUTHORIZATION_HEADER)
    claims = verify_token(
        authorization if isinstance(authorization, str) else None,
        body=message.body,
        job_id=command.job_id,
        auth=auth,
        keys=keys,
        required_scopes=frozenset({SCOPE_CANCEL, SCOPE_ADMIN}),
    )
    return CancelRequest(job_id=command.job_id, caller=claims.caller, is_admin=SCOPE_ADMIN in claims.scopes)


async def consume_control(
    channel: AbstractChannel, *, worker_name: str, on_message: Callable[[AbstractIncomingMessage], Awaitable[None]]
) -> AbstractQueue:
    """Bind this worker's own exclusive queue to the control fanout and consume it; keep the returned queue."""
    exchange = await channel.get_exchange(CONTROL_EXCHANGE)
    # A client-chosen name, unlike a server-named one, can be re-declared after a reconnect.
    queue = await channel.declare_queue(
        f"{CONTROL_EXCHANGE}.{worker_name}.{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True
    )
    await queue.bind(exchange)
    await queue.consume(on_message, no_ack=True)
    return queue


def apply_cancel(
    message: AbstractIncomingMessage, *, registry: JobRegistry, auth: AuthSettings, keys: VerificationKeys
) -> None:
    """Handle one control message: verify it, then stop or remember the cancel; a bad command is only logged."""
    try:
        request = parse_cancel(message, auth=auth, keys=keys)
    except (SdqueueError, ValidationError, ValueError) as exc:
        log.warning("dropping a control message: %s", exc)
        return
    outcome = registry.cancel(request)
    log.info("job %s: cancel by %s (%s)", request.job_id, request.caller, outcome)
