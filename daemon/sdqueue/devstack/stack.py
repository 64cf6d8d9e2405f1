"""A whole sdqueue stack on loopback: fresh credentials, SeaweedFS, and worker processes, for the demo and tests."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from pydantic import SecretStr

from sdqueue.config import Settings, child_environment
from sdqueue.devstack.seaweed import SeaweedServer, start_seaweed


def with_fresh_secrets(settings: Settings) -> Settings:
    """Copy of `settings` with random S3 keys and a random HS256 secret, for a throwaway local stack."""
    s3 = settings.s3.model_copy(
        update={"access_key_id": secrets.token_hex(10), "secret_access_key": SecretStr(secrets.token_urlsafe(30))}
    )
    auth = settings.auth.model_copy(update={"hs256_secret": SecretStr(secrets.token_urlsafe(48))})
    return settings.model_copy(update={"s3": s3, "auth": auth})


def start_storage(settings: Settings, *, data_dir: Path) -> tuple[SeaweedServer, Settings]:
    """Start SeaweedFS with the settings' keys and bucket; return it and the settings pointing at it."""
    secret = settings.s3.secret_access_key
    server = start_seaweed(
        data_dir,
        access_key_id=settings.s3.access_key_id or "",
        secret_access_key=secret.get_secret_value() if secret else "",
        bucket=settings.s3.bucket,
    )
    s3 = settings.s3.model_copy(update={"endpoint_url": server.endpoint_url})
    return server, settings.model_copy(update={"s3": s3})


def worker_environment(settings: Settings, *, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus its own `SDQUEUE_*` variables, plus those that rebuild `settings`."""
    return {**child_environment(settings, base=os.environ), **(extra or {})}


def start_worker(
    settings: Settings, *, log: IO[bytes], extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Run `python -m sdqueue worker` as a child process with exactly these settings.

    It leads its own session, so a terminal's Ctrl-C reaches only its parent, which stops it with `stop_process`.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "sdqueue", "worker"],
        env=worker_environment(settings, extra=extra_env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float = 30.0) -> int:
    """SIGTERM, wait up to `timeout_s`, then kill; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
