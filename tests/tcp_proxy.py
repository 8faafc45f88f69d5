"""A small asyncio TCP proxy that can fail like a network: stall, cut, forget.

``TcpProxy(("127.0.0.1", 5672))`` listens on an ephemeral port of 127.0.0.1 and
forwards every connection to the target.

- :meth:`TcpProxy.stall`: connections stay open and new ones are accepted, but no
  byte (and no close) gets through in either direction until :meth:`heal`: what a
  peer sees when a link or a middlebox silently stops forwarding.
- :meth:`TcpProxy.cut`: every connection is aborted and the port refuses new ones
  (until :meth:`stall` or :meth:`heal` listens again).
- :meth:`TcpProxy.heal`: forward again; held bytes are delivered.
- :meth:`TcpProxy.forget`: like a middlebox that lost its connection state: the
  connections it carried go silent for good (never closed), new ones flow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    flowing: asyncio.Event = field(default_factory=asyncio.Event)


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.accepted = 0  # connections accepted
        self._stalled = False
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._forgotten: list[_Link] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        await self._listen()
        return self.port

    async def stop(self) -> None:
        await self.cut()
        for link in self._forgotten:
            link.client.transport.abort()
            link.upstream.transport.abort()
        for task in list(self._tasks):
            task.cancel()

    def stall(self) -> None:
        """Hold every byte; keep (or start again) accepting connections."""
        self._stalled = True
        for link in self._links:
            link.flowing.clear()
        if self._server is None:
            self._spawn(self._listen())

    async def cut(self) -> None:
        """Abort every connection and refuse new ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.client.transport.abort()
            link.upstream.transport.abort()
        self._links.clear()

    async def heal(self) -> None:
        if self._server is None:
            await self._listen()
        self._stalled = False
        for link in self._links:
            link.flowing.set()

    def forget(self) -> None:
        """The current connections stay silent for good; new ones flow."""
        for link in self._links:
            link.flowing.clear()
        self._forgotten.extend(self._links)
        self._links.clear()
        self._stalled = False

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        if not self._stalled:
            link.flowing.set()
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, reader, up_writer), self._pump(link, up_reader, writer)
            )
        finally:
            self._links.discard(link)

    @staticmethod
    async def _pump(
        link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy one direction; while stalled, hold the data (and an end of stream)."""
        try:
            while True:
                data = await reader.read(65536)
                await link.flowing.wait()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
