"""The health monitor's verdicts from probes, without any real dependency."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health, health_pb2

from wallet_platform.server.readiness import LIVENESS_SERVICE, BoundedProbe, HealthMonitor

Status = health_pb2.HealthCheckResponse


class Switch:
    """A probe whose dependency is up, down (raises) or hung (never answers)."""

    def __init__(self) -> None:
        self.state = "up"
        self.started = 0
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.started += 1
        if self.state == "down":
            raise ConnectionError("refused")
        if self.state == "hung":
            await self.release.wait()


async def status(servicer: health.aio.HealthServicer, name: str) -> str:
    response = await servicer.Check(health_pb2.HealthCheckRequest(service=name), None)
    return str(Status.ServingStatus.Name(response.status))


async def test_names_follow_the_probes_and_liveness_does_not() -> None:
    servicer = health.aio.HealthServicer()
    switch = Switch()
    monitor = HealthMonitor(
        servicer, ["wallet.v1.FraudService"], [BoundedProbe("db", switch, timeout=0.2)]
    )
    await monitor.start()
    try:
        assert await status(servicer, "") == "SERVING"
        assert await status(servicer, "wallet.v1.FraudService") == "SERVING"
        switch.state = "down"
        await monitor.probe_once()
        assert monitor.down == ("db",)
        assert await status(servicer, "") == "NOT_SERVING"
        assert await status(servicer, "wallet.v1.FraudService") == "NOT_SERVING"
        assert await status(servicer, LIVENESS_SERVICE) == "SERVING"
        switch.state = "up"
        await monitor.probe_once()
        assert await status(servicer, "") == "SERVING"
    finally:
        await monitor.stop()
    assert await status(servicer, "") == "NOT_SERVING"  # a stopping server is not ready


async def test_a_hung_probe_is_down_after_its_timeout_and_never_doubled() -> None:
    switch = Switch()
    switch.state = "hung"
    probe = BoundedProbe("db", switch, timeout=0.05)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await probe.healthy() is False
    assert loop.time() - began < 1.0
    assert await probe.healthy() is False  # still waiting for the same probe
    assert switch.started == 1
    switch.state = "up"
    switch.release.set()  # the hung probe answers at last
    assert await probe.healthy() is True
    assert await probe.healthy() is True
    assert switch.started == 2  # a fresh probe once the old one finished
