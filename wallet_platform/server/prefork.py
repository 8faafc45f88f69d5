"""Several server processes on one port (``--workers N``), and the event loop choice.

A Python process saturates one core at a few thousand gRPC calls per second, so a
stateless server scales out by running N copies that share the listening port:
every worker binds the same ``HOST:PORT`` with ``SO_REUSEPORT`` (set by
``builder.create_server`` with ``reuse_port``) and the kernel spreads incoming *connections* over
them. The parent applies the migrations once, forks the workers before any gRPC or
database object exists (gRPC is not fork-safe once started), forwards SIGINT/SIGTERM
to them, and restarts a worker that dies unexpectedly.

Every component of the platform tolerates several copies of itself by design: the
outbox relay claims rows with ``FOR UPDATE SKIP LOCKED``, saga replicas claim work
with leases, consumers share a queue and dedupe with their inbox. ``--workers`` is
meant for PostgreSQL + RabbitMQ; with SQLite the workers simply queue on the file's
write lock.

:func:`new_event_loop` returns a uvloop loop when uvloop is installed (faster socket
and callback handling for the database driver), unless ``WALLET_UVLOOP=0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available and not disabled, else the default asyncio loop."""
    if os.environ.get("WALLET_UVLOOP", "1") not in ("0", "false", "no", "off"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_loop(main: Callable[[], object]) -> None:
    """``asyncio.run`` on the loop :func:`new_event_loop` picks."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())  # type: ignore[arg-type]


def listen_port(listen: str) -> int:
    try:
        return int(listen.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0


def supervise(workers: int, listen: str, serve: Callable[[], None]) -> int:
    """Fork ``workers`` processes that each call ``serve()``; return when all stopped."""
    if listen_port(listen) == 0:
        raise SystemExit("--workers > 1 needs a fixed port in --listen (not 0)")
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 0
            try:
                serve()
            except SystemExit as error:
                code = error.code if isinstance(error.code, int) else 1
            except BaseException:
                log.exception("worker %s crashed", index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for index in range(workers):
        spawn(index)
    log.info("%d workers on %s: %s", workers, listen, sorted(children))
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            status = status or (code if code > 0 else 0)
            continue
        log.error("worker %s (pid %s) exited with %s; restarting it", index, pid, code)
        time.sleep(RESTART_DELAY_SECONDS)
        if not stopping:
            spawn(index)
    return status
