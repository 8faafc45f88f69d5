"""Running ``walletctl`` for real against an in-process ``wallet-stack`` (test helper).

The stack is the one ``wallet-stack`` runs (``entrypoints.build_stack``), bound to
port 0. The CLI is the real ``walletctl.cli.main`` run on a worker thread (it is a
blocking program and the servers share the test's event loop), with an empty
environment so the developer's ``WALLET_*`` variables cannot leak in.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from wallet_platform.config import Settings
from wallet_platform.server.process import RunningServer, start_server
from wallet_stack.main import build_stack
from walletctl.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


@asynccontextmanager
async def running_stack(database_url: str, **overrides: Any) -> AsyncIterator[RunningServer]:
    values: dict[str, Any] = {"listen": "127.0.0.1:0", "log_format": "console", **overrides}
    settings = Settings(database_url=database_url, **values)
    running = await start_server(settings, build_stack, role="stack")
    try:
        yield running
    finally:
        await running.stop(grace=1)


async def walletctl(
    *args: str, target: str = "", database_url: str = "", env: Mapping[str, str] | None = None
) -> Result:
    argv: list[str] = []
    if target:
        argv += ["--target", target]
    if database_url:
        argv += ["--database-url", database_url]
    argv += list(args)
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, argv, stdout=out, stderr=err, environ=dict(env or {}))
    return Result(code, out.getvalue(), err.getvalue())


class Ctl:
    """``walletctl`` bound to one running stack and its database."""

    def __init__(self, running: RunningServer, database_url: str) -> None:
        self.target = running.target
        self.database_url = database_url

    async def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        return await walletctl(*args, target=self.target, database_url=self.database_url, env=env)

    async def ok(self, *args: str) -> Any:
        """Run with --json, expect exit 0, return the parsed output."""
        result = await self(*args, "--json")
        assert result.code == 0, (args, result)
        return result.json
