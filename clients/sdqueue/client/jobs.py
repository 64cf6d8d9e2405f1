"""Helpers for building requests: fresh job ids."""

from __future__ import annotations

import uuid


def new_job_id() -> str:
    """A fresh, unguessable job id that matches the contract's pattern."""
    return uuid.uuid4().hex
