"""Several bridge processes on one port, each accepting on a listening socket of its own (SO_REUSEPORT).

uvicorn's `workers` share one listening socket, and the process that wakes first accepts every connection that
is waiting: of 200 connections opened at once, one of two processes took up to 71 % (62 % in the median round),
and a burst lasted as long as that process's share (docs/benchmarks.md). With a socket each, the kernel spreads
connections over the processes by a hash of their addresses (45-55 % each in the same rounds).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import threading
from multiprocessing.context import SpawnProcess
from typing import TYPE_CHECKING, Any

from prometheus_client import multiprocess

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("uvicorn.error")

STARTUP_FAILURE = 3  # uvicorn's exit code when a process cannot start: restarting it would fail the same way
WATCH_INTERVAL_S = 0.5
STOP_TIMEOUT_S = 30.0


def serve_processes(app_factory: str, *, count: int, options: dict[str, Any]) -> int:
    """Serve `count` uvicorn processes of the app factory, restarting any that dies, until SIGINT or SIGTERM.

    `options` (`host` and `port` among them) go to the processes' `uvicorn.Config`. Returns 0, or 1 when the port
    is taken or a process cannot start (the log says why).
    """
    import uvicorn

    config = uvicorn.Config(app_factory, factory=True, **options)  # which configures this process's logging too
    try:
        reservation = _reuse_port_socket(config.host, config.port)  # bound, not listening: holds the port only
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 1
    with reservation:
        config.port = reservation.getsockname()[1]  # resolved, when `port` is 0
        return _Supervisor(config, count=count).run()


class _Supervisor:
    """Starts the processes, replaces any that dies, and stops them all on SIGINT or SIGTERM."""

    def __init__(self, config: uvicorn.Config, *, count: int) -> None:
        self._config = config
        self._count = count
        self._stop = threading.Event()
        self._processes: list[SpawnProcess] = []

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self._stop.set())
        self._processes = [self._start() for _ in range(self._count)]
        host = f"[{self._config.host}]" if ":" in self._config.host else self._config.host
        log.info("bridge on http://%s:%d, %d processes (CTRL+C to quit)", host, self._config.port, self._count)
        failed = False
        while not failed and not self._stop.wait(WATCH_INTERVAL_S):
            failed = not self._replace_dead()
        self._stop_all()
        return 1 if failed else 0

    def _start(self) -> SpawnProcess:
        process = multiprocessing.get_context("spawn").Process(target=_serve_one, args=(self._config,))
        process.start()
        return process

    def _replace_dead(self) -> bool:
        """Restart each process that has died; False when one failed at start-up (the others would too)."""
        for index, process in enumerate(self._processes):
            if process.is_alive() or self._stop.is_set():
                continue
            if process.exitcode == STARTUP_FAILURE:
                log.error("bridge process [%s] failed to start; stopping", process.pid)
                return False
            log.warning("bridge process [%s] died (exit code %s); starting another", process.pid, process.exitcode)
            _forget_metrics(process)
            self._processes[index] = self._start()
        return True

    def _stop_all(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()  # uvicorn shuts down gracefully on SIGTERM
        for process in self._processes:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                log.warning("bridge process [%s] did not stop in %.0f s; killing it", process.pid, STOP_TIMEOUT_S)
                process.kill()
                process.join()


def _serve_one(config: uvicorn.Config) -> None:
    """One process: a uvicorn server of the config's app on a SO_REUSEPORT socket of its own."""
    import uvicorn

    config.configure_logging()  # a spawned process starts with none
    try:
        sock = _reuse_port_socket(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    uvicorn.Server(config).run(sockets=[sock])


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _forget_metrics(process: SpawnProcess) -> None:
    """Drop a dead process's live gauges (its counters stay: they still count toward the bridge's totals)."""
    if process.pid is not None:
        multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
