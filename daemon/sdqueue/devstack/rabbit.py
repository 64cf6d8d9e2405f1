"""Make sure a RabbitMQ broker answers, starting (or installing) a local one for development if needed."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from urllib.parse import SplitResult, urlsplit, urlunsplit

log = logging.getLogger(__name__)

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
AMQP_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_METHOD = 1
_CONNECTION_START = (10, 10)  # class id, method id
_START_FRAME_PREFIX_BYTES = 11  # frame type, channel, size, class id, method id
_SBIN = Path("/usr/sbin")
_VHOST_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_COMMAND_TIMEOUT_S = 30.0
_INSTALL_TIMEOUT_S = 600.0
_POLL_INTERVAL_S = 0.5
_HOW_TO_GET_ONE = (
    "install RabbitMQ (sudo apt-get install rabbitmq-server), run one in Docker "
    "(docker run -d -p 127.0.0.1:5672:5672 rabbitmq:3), or point SDQUEUE_BROKER__URL at a running broker"
)


class DevstackError(RuntimeError):
    """A development service (RabbitMQ, SeaweedFS) could not be found, started or used."""


def broker_is_up(url: str, *, timeout_s: float = 3.0) -> bool:
    """Return whether an AMQP 0-9-1 server answers the protocol header at `url`; no credentials are sent."""
    parts = urlsplit(url)
    host, port = _host_port(parts)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            if parts.scheme == "amqps":
                with ssl.create_default_context().wrap_socket(raw, server_hostname=host) as tls:
                    return _answers_connection_start(tls)
            return _answers_connection_start(raw)
    except OSError:
        return False


def ensure_rabbitmq(url: str, *, startup_timeout_s: float = 60.0) -> None:
    """Return once a broker answers at `url`, starting or installing a local RabbitMQ when `url` is loopback.

    Raises:
        DevstackError: nothing answers and no local broker could be started.
    """
    if broker_is_up(url):
        return
    host, port = _host_port(urlsplit(url))
    if not _is_loopback(host):
        raise DevstackError(f"no AMQP broker answers at {host}:{port}; {_HOW_TO_GET_ONE}")
    log.info("no AMQP broker answers at %s:%s; starting a local RabbitMQ", host, port)
    server = _find_tool("rabbitmq-server") or _install_rabbitmq()
    _start_rabbitmq(server, url=url, timeout_s=startup_timeout_s)


def create_vhost(name: str, *, base_url: str = DEFAULT_BROKER_URL) -> str:
    """Create vhost `name` on the local broker, grant `base_url`'s user everything there, and return its URL.

    Raises:
        DevstackError: the name is not a plain vhost name, or `rabbitmqctl` failed.
    """
    if not _VHOST_PATTERN.match(name):
        raise DevstackError(f"vhost name {name!r} must be 1-200 of [A-Za-z0-9._-]")
    parts = urlsplit(base_url)
    user = parts.username or "guest"
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    return urlunsplit(parts._replace(path=f"/{name}", query="", fragment=""))


def delete_vhost(name: str) -> None:
    """Delete vhost `name` and everything in it from the local broker.

    Raises:
        DevstackError: `rabbitmqctl` failed, for instance because the vhost does not exist.
    """
    _rabbitmqctl("delete_vhost", name)


def _host_port(parts: SplitResult) -> tuple[str, int]:
    default_port = 5671 if parts.scheme == "amqps" else 5672
    return parts.hostname or "localhost", parts.port or default_port


def _answers_connection_start(sock: socket.socket) -> bool:
    sock.sendall(AMQP_PROTOCOL_HEADER)
    frame = b""
    while len(frame) < _START_FRAME_PREFIX_BYTES:
        chunk = sock.recv(_START_FRAME_PREFIX_BYTES - len(frame))
        if not chunk:
            return False
        frame += chunk
    channel = int.from_bytes(frame[1:3], "big")
    method = (int.from_bytes(frame[7:9], "big"), int.from_bytes(frame[9:11], "big"))
    return frame[0] == _FRAME_METHOD and channel == 0 and method == _CONNECTION_START


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _find_tool(name: str) -> Path | None:
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    # Debian puts the RabbitMQ tools in /usr/sbin, which is not on an ordinary user's PATH.
    candidate = _SBIN / name
    return candidate if candidate.is_file() else None


def _install_rabbitmq() -> Path:
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        raise DevstackError(f"RabbitMQ is not installed and cannot be installed automatically here; {_HOW_TO_GET_ONE}")
    log.info("installing rabbitmq-server with apt-get")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt_get, "update"], [apt_get, "install", "-y", "rabbitmq-server"]):
        _run(command, timeout_s=_INSTALL_TIMEOUT_S, env=environment)
    server = _find_tool("rabbitmq-server")
    if server is None:
        raise DevstackError(f"apt-get installed rabbitmq-server but the binary is missing; {_HOW_TO_GET_ONE}")
    return server


def _start_rabbitmq(server: Path, *, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    log.info("running %s -detached", server)
    _run([str(server), "-detached"], timeout_s=_COMMAND_TIMEOUT_S)
    log.info("waiting up to %.0fs for RabbitMQ to finish starting", timeout_s)
    try:
        _rabbitmqctl("await_startup", timeout_s=max(1.0, deadline - time.monotonic()))
    except DevstackError as exc:
        # await_startup fails at once while the Erlang node itself is still booting; the polling below decides.
        log.info("rabbitmqctl await_startup did not confirm startup (%s); polling the port", exc)
    while time.monotonic() < deadline:
        if broker_is_up(url):
            log.info("RabbitMQ is up")
            return
        time.sleep(_POLL_INTERVAL_S)
    raise DevstackError(f"RabbitMQ started but did not answer within {timeout_s}s; {_HOW_TO_GET_ONE}")


def _rabbitmqctl(*args: str, timeout_s: float = _COMMAND_TIMEOUT_S) -> None:
    tool = _find_tool("rabbitmqctl")
    if tool is None:
        raise DevstackError(f"rabbitmqctl not found; {_HOW_TO_GET_ONE}")
    _run([str(tool), *args], timeout_s=timeout_s)


def _run(command: list[str], *, timeout_s: float, env: dict[str, str] | None = None) -> None:
    name = " ".join([Path(command[0]).name, *command[1:2]])
    log.debug("running %s", command)
    try:
        done = subprocess.run(  # noqa: S603  # our own argument list, no shell
            command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DevstackError(f"{name} did not finish within {timeout_s:.0f}s") from exc
    except OSError as exc:
        raise DevstackError(f"{name} could not run: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise DevstackError(f"{name} failed with status {done.returncode}: {detail}")
