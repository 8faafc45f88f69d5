"""Composition root of the saga orchestrator: one component named ``saga``.

``saga-orchestrator`` and ``wallet-stack`` both call :func:`build_components`. The
WalletService target: in the stack (every service in this process) the process's own
address, unless ``WALLET_SERVICE_TARGET`` / ``--wallet-service-target`` says otherwise;
elsewhere ``settings.wallet_service_target``. The channel is opened on first use,
inside the event loop, after the server knows its own bound address.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import grpc

from saga_orchestrator.domain import TERMINAL_STATES, TransferState
from saga_orchestrator.engine.runner import RetryPolicy, SagaRunner
from saga_orchestrator.gateway import GrpcWalletGateway, WalletGateway
from saga_orchestrator.grpc_api import TransferServicer
from saga_orchestrator.notifier import TransferNotifier
from saga_orchestrator.repository import TransferRepository
from saga_orchestrator.service import TransferService
from saga_orchestrator.step_batcher import BATCHES_IN_FLIGHT, MAX_STEP_BATCH, StepBatcher
from saga_orchestrator.sweeper import Sweeper
from saga_orchestrator.watch_feed import TransferFeed
from wallet.v1 import transfer_pb2, transfer_pb2_grpc
from wallet_platform.channels import CallMetadata, make_channel
from wallet_platform.config import Settings
from wallet_platform.observability.state_metrics import SagaSource, register_state_source
from wallet_platform.runtime import Runtime
from wallet_platform.server.builder import Component

SERVICE_NAME = str(transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name)


class SagaComponent:
    """TransferService plus the background work that finishes sagas (runner, sweeper)."""

    name = "saga"

    def __init__(
        self,
        service: TransferService,
        runner: SagaRunner,
        sweeper: Sweeper,
        servicer: TransferServicer,
        gateway: WalletGateway,
        feed: TransferFeed,
    ) -> None:
        self.service = service
        self.runner = runner
        self.sweeper = sweeper
        self.servicer = servicer
        self.gateway = gateway
        self.feed = feed
        self.service_names: tuple[str, ...] = (SERVICE_NAME,)

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        transfer_pb2_grpc.add_TransferServiceServicer_to_server(self.servicer, server)
        return self.service_names

    async def start(self) -> None:
        self.sweeper.start()  # its first sweep resumes what a previous run left unfinished

    async def stop(self) -> None:
        await self.feed.stop()  # watch streams end now instead of holding up the drain
        await self.sweeper.stop()
        await self.runner.stop()
        close = getattr(self.gateway, "close", None)
        if close is not None:
            await close()


def wallet_service_target(runtime: Runtime) -> str:
    settings = runtime.settings
    explicit = bool(os.environ.get("WALLET_SERVICE_TARGET")) or (
        settings.wallet_service_target != Settings().wallet_service_target
    )
    if runtime.role == "stack" and not explicit and runtime.self_target:
        return runtime.self_target
    return settings.wallet_service_target


def retry_policy(settings: Settings) -> RetryPolicy:
    """The runner's policy. With step batching, the bulkhead on step calls in flight
    admits as many steps as the batches in flight carry: WalletService then sees a
    few batch calls, whose items it runs under its own cap (``MAX_ITEMS_IN_FLIGHT``)."""
    policy = RetryPolicy(
        step_deadline=settings.saga_step_deadline_ms / 1000,
        max_backoff=settings.saga_retry_max_ms / 1000,
        lease=settings.saga_lease_ms / 1000,
    )
    if settings.saga_step_batch:
        steps = settings.saga_step_batch_max * BATCHES_IN_FLIGHT
        policy = replace(policy, max_concurrent_calls=max(policy.max_concurrent_calls, steps))
    return policy


def step_gateway(settings: Settings, gateway: GrpcWalletGateway) -> WalletGateway:
    """``gateway`` itself, or with its step calls batched (``WALLET_SAGA_STEP_BATCH``).

    A bad value stops the process at start-up with the setting named (no traceback).
    """
    if settings.saga_step_batch not in (0, 1):
        raise SystemExit(f"WALLET_SAGA_STEP_BATCH must be 0 or 1, got {settings.saga_step_batch}")
    if not 1 <= settings.saga_step_batch_max <= MAX_STEP_BATCH:
        raise SystemExit(
            f"WALLET_SAGA_STEP_BATCH_MAX must be 1..{MAX_STEP_BATCH}, "
            f"got {settings.saga_step_batch_max}"
        )
    if not settings.saga_step_batch:
        return gateway
    return StepBatcher(gateway, max_batch=settings.saga_step_batch_max)


def build_components(runtime: Runtime, *, gateway: WalletGateway | None = None) -> list[Component]:
    """Wire the orchestrator; tests may pass a fake ``gateway``."""
    settings = runtime.settings
    if gateway is None:
        # The token and audit id go on each call from the gateway, not through a
        # channel interceptor (cheaper per call; see GrpcWalletGateway).
        grpc_gateway = GrpcWalletGateway(
            lambda: make_channel(
                wallet_service_target(runtime),
                settings,
                options=[("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 100)],
                metadata_interceptor=False,
            ),
            metadata=CallMetadata(settings),
        )
        gateway = step_gateway(settings, grpc_gateway)
    repository = TransferRepository(runtime.db)
    notifier = TransferNotifier()
    runner = SagaRunner(repository, gateway, notifier, retry_policy(settings))
    sweeper = Sweeper(repository, runner, interval=settings.saga_sweep_interval_ms / 1000)
    service = TransferService(
        repository,
        runner,
        gateway,
        notifier,
        wait_seconds=settings.transfer_wait_ms / 1000,
        lookup_timeout=settings.saga_step_deadline_ms / 1000,
    )
    feed = TransferFeed(repository, notifier)
    register_state_source(runtime, SagaSource(tuple(TransferState), TERMINAL_STATES))
    servicer = TransferServicer(service, feed)
    return [SagaComponent(service, runner, sweeper, servicer, gateway, feed)]
