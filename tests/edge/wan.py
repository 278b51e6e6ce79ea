"""A loopback TCP proxy standing in for the WAN between an edge agent and the gateway.

`pass_through()` forwards bytes both ways. `drop()` cuts the link the loud way: every open
connection is reset and new ones are reset on arrival. `blackhole()` cuts it the silent way:
connections stay open and new ones are accepted, but no byte crosses until the link returns
(held bytes then flow, as after a partition that TCP rode out).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct


class Link(enum.Enum):
    UP = "up"
    DROPPED = "dropped"
    BLACKHOLED = "blackholed"


class WanProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._link = Link.UP
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def pass_through(self) -> None:
        self._link = Link.UP
        self._flowing.set()

    def drop(self) -> None:
        self._link = Link.DROPPED
        self._flowing.set()
        self._reset_all()

    def blackhole(self) -> None:
        self._link = Link.BLACKHOLED
        self._flowing.clear()

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._link is Link.DROPPED:
            _reset(client_w)
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            _reset(client_w)
            return
        self._writers |= {client_w, server_w}
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pump(reader, writer, (client_w, server_w)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, ...],
    ) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()  # a blackholed link holds the bytes
                if self._link is Link.DROPPED:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in pair:
                self._writers.discard(w)
                _reset(w)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Closes with a TCP reset (SO_LINGER 0), as a dropped link looks to the peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
