"""Per-user caps on what holds a connection open: event streams and waits."""

from __future__ import annotations

from collections import Counter

from sdqueue.contracts import BridgeCode
from sdqueue.contracts.errors import BridgeError


class StreamSlots:
    """Counts each user's open streams and waits in this process, refusing one over `per_user`."""

    def __init__(self, *, per_user: int) -> None:
        self._per_user = per_user
        self._open: Counter[str] = Counter()

    def take(self, user_id: str) -> StreamSlot:
        """Hold one of the user's slots until the returned slot is released.

        Raises:
            BridgeError: `too_many_requests` when the user holds every slot.
        """
        if self._open[user_id] >= self._per_user:
            raise BridgeError(
                BridgeCode.TOO_MANY_REQUESTS,
                f"at most {self._per_user} event streams and waits at once",
                headers={"Retry-After": "1"},
            )
        self._open[user_id] += 1
        return StreamSlot(self, user_id)

    def held(self, user_id: str) -> int:
        """How many slots the user holds."""
        return self._open[user_id]

    def give_back(self, user_id: str) -> None:
        """Release one of the user's slots (through `StreamSlot.release`, which makes it idempotent)."""
        self._open[user_id] -= 1
        if self._open[user_id] <= 0:
            del self._open[user_id]


class StreamSlot:
    """One held slot; `release` is idempotent, so every path that ends a stream may call it."""

    def __init__(self, slots: StreamSlots, user_id: str) -> None:
        self._slots = slots
        self._user_id = user_id
        self._held = True

    def release(self) -> None:
        """Give the slot back (once)."""
        if self._held:
            self._held = False
            self._slots.give_back(self._user_id)

    def __enter__(self) -> StreamSlot:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
