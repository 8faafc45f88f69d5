"""The life of a server process: start, serve, stop.

``run_server`` is the whole life of a server process: logging, tracing (the ``OTEL_*``
variables, ``wallet_platform.observability.tracing``), failpoints, migrations, the
database, the components, the gRPC server, health, then a clean stop on SIGINT/SIGTERM
(health NOT_SERVING, components stopped, in-flight calls given a grace period,
connections closed, buffered spans exported). Between the two, health follows the
database and the event bus (:mod:`wallet_platform.server.readiness`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from wallet_platform import failpoints
from wallet_platform.config import Settings
from wallet_platform.observability import tracing
from wallet_platform.observability.logs import setup_logging
from wallet_platform.runtime import BUS_EXTRA_KEY, Runtime
from wallet_platform.server import exposure, prefork
from wallet_platform.server.builder import (
    Component,
    create_server,
    server_credentials,
    set_health,
)
from wallet_platform.server.plumbing import ServerPlumbing
from wallet_platform.server.readiness import (
    PROBE_TIMEOUT_SECONDS,
    BoundedProbe,
    HealthMonitor,
    bus_probe,
    database_probe,
)
from wallet_platform.storage import migrate
from wallet_platform.storage.database import Database, create_probe_engine

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 5.0


ComponentFactory = Callable[[Runtime], Sequence[Component]]
InterceptorFactory = Callable[[Runtime], Sequence[grpc.aio.ServerInterceptor]]


def _no_interceptors(_runtime: Runtime) -> Sequence[grpc.aio.ServerInterceptor]:
    return ()


class RunningServer:
    """A started server and its components (``start_server``); ``stop()`` ends it."""

    def __init__(
        self,
        runtime: Runtime,
        server: grpc.aio.Server,
        port: int,
        components: Sequence[Component],
        health_servicer: Any,
        plumbing: ServerPlumbing | None = None,
        monitor: HealthMonitor | None = None,
    ) -> None:
        self.plumbing = plumbing
        self.monitor = monitor
        self.runtime = runtime
        self.server = server
        self.port = port
        self.components = components
        self.health = health_servicer

    @property
    def target(self) -> str:
        return self.runtime.self_target

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        if self.monitor is not None:
            await self.monitor.stop()  # every name NOT_SERVING, probing ended
        await set_health(self.health, serving=False)
        for component in reversed(self.components):
            try:
                await component.stop()
            except Exception:
                log.exception("error stopping %s", component.name)
        await self.server.stop(grace)
        if self.plumbing is not None:  # after the drain: the last calls' audit rows
            await self.plumbing.stop()
        await self.runtime.db.dispose()
        if self.monitor is not None:
            await self.monitor.dispose()


async def start_server(
    settings: Settings,
    build_components: ComponentFactory,
    *,
    role: str,
    build_interceptors: InterceptorFactory = _no_interceptors,
) -> RunningServer:
    """Migrate, build and start a server; tests call this with ``listen=127.0.0.1:0``."""
    failpoints.configure(settings.failpoints)
    # Here rather than in run_server: each forked worker needs its own exporter thread.
    tracing.setup_from_env(role)
    await asyncio.to_thread(migrate.upgrade, settings.database_url)
    db = Database.from_settings(settings)
    runtime = Runtime(settings=settings, db=db, role=role)
    components = build_components(runtime)
    plumbing = ServerPlumbing(runtime)  # metrics, audit, auth: every server
    own = list(build_interceptors(runtime))
    try:
        server, port, health_servicer = await create_server(
            settings.listen,
            components,
            # Errors are mapped innermost: by the plumbing itself unless the service
            # adds interceptors, then by create_server's ErrorInterceptor after them.
            interceptors=[plumbing.interceptor(error_mapping=not own), *own],
            credentials=server_credentials(settings),
            options=plumbing.limits.grpc_options(),
            reuse_port=settings.workers > 1,
            error_mapping=bool(own),
        )
    except BaseException:
        await db.dispose()
        raise
    host = settings.listen.rsplit(":", 1)[0]
    if host in ("0.0.0.0", "[::]", "", "::"):
        host = "127.0.0.1"
    runtime.self_target = f"{host}:{port}"
    await plumbing.start()
    await server.start()
    for component in components:
        await component.start()
    await plumbing.start_collecting()
    services = [name for c in components for name in getattr(c, "service_names", ())]
    monitor = dependency_monitor(runtime, health_servicer, services)
    await monitor.start()  # SERVING once the database (and the bus) answer
    log.info(
        "%s listening on %s",
        role,
        runtime.self_target,
        extra={"components": [c.name for c in components]},
    )
    return RunningServer(runtime, server, port, components, health_servicer, plumbing, monitor)


def dependency_monitor(
    runtime: Runtime, health_servicer: Any, services: Sequence[str]
) -> HealthMonitor:
    """Readiness of ``services`` (and ``""``) from the database and the process's bus."""
    engine = create_probe_engine(runtime.settings, PROBE_TIMEOUT_SECONDS)
    probes = [
        BoundedProbe("database", database_probe(engine)),
        BoundedProbe("event bus", bus_probe(runtime, BUS_EXTRA_KEY)),
    ]
    return HealthMonitor(health_servicer, services, probes, engine=engine)


async def serve_forever(
    settings: Settings,
    build_components: ComponentFactory,
    *,
    role: str,
    build_interceptors: InterceptorFactory = _no_interceptors,
) -> None:
    running = await start_server(
        settings, build_components, role=role, build_interceptors=build_interceptors
    )
    print(f"{role} listening on {running.target}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("%s stopping", role)
    await running.stop()
    await asyncio.to_thread(tracing.shutdown)  # export the spans still buffered
    log.info("%s stopped", role)


def run_server(
    description: str,
    role: str,
    default_listen: str,
    build_components: ComponentFactory,
    argv: Sequence[str] | None = None,
    build_interceptors: InterceptorFactory = _no_interceptors,
) -> None:
    """The body of every server's ``main()``.

    Refuses to serve a non-loopback address without authentication
    (``wallet_platform.server.exposure``) before anything else happens.
    """
    from wallet_platform.config import parse_settings

    settings = parse_settings(description, argv, default_listen=default_listen)
    setup_logging(settings.log_level, settings.log_format, settings.log_file)
    exposure.enforce(settings, role)  # before migrations, binding or forking workers

    def serve() -> None:
        try:
            with contextlib.suppress(KeyboardInterrupt):
                prefork.run_loop(
                    lambda: serve_forever(
                        settings,
                        build_components,
                        role=role,
                        build_interceptors=build_interceptors,
                    )
                )
        except OSError as error:  # e.g. the port is taken: say so, no traceback
            log.error("%s cannot start: %s", role, error)
            raise SystemExit(f"{role}: {error}") from None

    if settings.workers > 1:
        # Migrate once here, then fork the workers (see wallet_platform.server.prefork).
        migrate.upgrade(settings.database_url)
        raise SystemExit(prefork.supervise(settings.workers, settings.listen, serve))
    serve()
