"""The feed simulator: an Arrow file of ticks served as a live WebSocket feed (``serve-feed``).

:class:`FeedServer` plays a tick file (Arrow IPC file or stream, or Parquet: anything
:func:`~tickpool.connectors.arrow_source.iter_tick_batches` reads) to every connected client,
paced by the ``ts`` column at ``speed`` times market speed (0: as fast as the clients take it).
It is one shared timeline, like a market: playback starts when the first client connects,
pauses while none is connected (so no tick is sent to nobody), and a client that joins later
gets the ticks from then on. Each frame is awaited on each client in turn, so the slowest
client sets the pace (backpressure, nothing lost), which is what a benchmark of the consumer
wants to see. A client that takes no frame for ``send_timeout_s`` (5 s) is stuck: its
connection is aborted (so a client with reconnect logic comes back) and the others go on.

At the end of the file (never with ``loop``) every client is closed with code 1000 and reason
``end of file`` once it has been sent everything, and the server stops listening:
:meth:`serve` returns and ``tickpool serve-feed`` exits. :meth:`stop` instead aborts the
connections at once (no close handshakes), as a simulator that is switched off.

Messages (``fmt``):

- ``generic``: ``{"ts": <int ns>, "symbol": ..., "price": ..., "size": ...}``; with ``batch > 1``
  a frame is a JSON array of up to ``batch`` ticks that are due (fewer frames at high rates).
- ``coinbase``: Coinbase Exchange ``ticker`` messages (``product_id``, ``price`` and
  ``last_size`` as decimal strings, ``time`` ISO-8601 with microseconds, ``sequence``). As with
  Coinbase, a client gets nothing until it sends ``{"type": "subscribe", ...}``; then a
  ``subscriptions`` reply, then the ticks (any product: the simulator does not filter).

For tests and benchmarks: ``start()`` runs the server in a background thread and returns the
bound port (``port=0`` picks a free one), ``stop()`` ends it; ``drop_after=N`` aborts every
connection once, after N ticks (a network failure, for reconnect tests); ``stamp_send_time``
replaces each tick's ``ts`` with the wall-clock time it is sent (``time.time_ns()``), so the
consumer can measure tick-sent-to-prediction latency from the predictions' ``ts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tickpool.connectors.arrow_source import iter_tick_batches

__all__ = ["FeedServer", "MessageFormat"]

log = logging.getLogger(__name__)

MessageFormat: TypeAlias = Literal["generic", "coinbase"]

_SEND_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class _Rows:
    """One file batch as Python lists (``size`` None when the file has no size column).

    Nulls in the file stay None: they are sent as JSON nulls (the consumer dead-letters them),
    and a row without ``ts`` is sent without waiting.
    """

    ts: list[Any]
    symbol: list[Any]
    price: list[Any]
    size: list[Any]
    time_text: list[Any] | None  # ISO-8601 with microseconds (coinbase only)


class FeedServer:
    """Serve ``path``'s ticks over WebSocket (see the module docstring).

    Args:
        path: the tick file (``ts``, ``symbol``, ``price``; ``size`` optional).
        host, port: where to listen (port 0: any free port; see :attr:`port`).
        speed: 0 sends as fast as the clients take it; ``S > 0`` at S times market speed.
        fmt: ``generic`` or ``coinbase`` messages.
        batch: ticks per frame at most (``generic`` only): due ticks are sent together.
        loop: replay the file forever (``ts`` shifted by the file's span on each pass).
        stamp_send_time: send ``ts`` = wall-clock nanoseconds at sending (generic only).
        drop_after: abort all connections once, after this many ticks have been sent.
        value: the price column's name in the file.
        send_timeout_s: a client that takes no frame for this long is disconnected.

    Attributes:
        ticks_sent: ticks sent (counted once per client that got them; a frame cut short by a
            send timeout is not counted).
        clients_timed_out: connections aborted because a send timed out.
        frames_sent: frames sent (likewise).
        connections: connections accepted so far.
        listening: set once the server listens (then :attr:`port` is the bound port).
        finished: set when the file has been played to its end (never with ``loop``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        fmt: MessageFormat = "generic",
        batch: int = 1,
        loop: bool = False,
        stamp_send_time: bool = False,
        drop_after: int | None = None,
        value: str = "price",
        send_timeout_s: float = _SEND_TIMEOUT_S,
    ) -> None:
        if fmt not in ("generic", "coinbase"):
            raise ValueError(f"format must be 'generic' or 'coinbase'; got {fmt!r}")
        if not speed >= 0:
            raise ValueError(f"speed must be >= 0 (0 = as fast as possible); got {speed}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1; got {batch!r}")
        if fmt != "generic" and (batch > 1 or stamp_send_time):
            raise ValueError("batch > 1 and stamp_send_time need the generic format")
        if not send_timeout_s > 0:
            raise ValueError(f"send_timeout_s must be > 0; got {send_timeout_s}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535; got {port}")
        self.path = os.fspath(path)
        next(iter_tick_batches(self.path), None)  # a clear error now, not in the player task
        self.host = host
        self.port = port
        self.speed = speed
        self.fmt = fmt
        self.batch = batch
        self.loop = loop
        self.stamp_send_time = stamp_send_time
        self.drop_after = drop_after
        self.value = value
        self.send_timeout_s = send_timeout_s
        self.clients_timed_out = 0
        self.ticks_sent = 0
        self.frames_sent = 0
        self.connections = 0
        self.finished = threading.Event()
        self._clients: set[ServerConnection] = set()
        self._present: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        self._error: BaseException | None = None

    # -- running --------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Listen and play until the end of the file (clients closed with 1000 "end of file"),
        :meth:`stop` or cancellation; :attr:`port` is set once bound."""
        self._aloop = asyncio.get_running_loop()
        self._present = asyncio.Event()
        self._stopping = asyncio.Event()
        async with serve(
            self._handle, self.host, self.port, compression=None, close_timeout=1.0
        ) as server:
            self.port = _bound_port(server)
            self.listening.set()
            log.info("serving %s on ws://%s:%d", self.path, self.host, self.port)
            player = asyncio.create_task(self._play())
            stopper = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({player, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if player.done() and player.exception() is not None:
                raise player.exception()  # type: ignore[misc]
            if player.done():
                # The end of the file: every client hears so (code 1000), then we stop listening.
                stopper.cancel()
                closing = [ws.close(1000, "end of file") for ws in list(self._clients)]
                with contextlib.suppress(TimeoutError):  # a stuck client is aborted below
                    async with asyncio.timeout(self.send_timeout_s + 1.0):
                        await asyncio.gather(*closing, return_exceptions=True)
            for ws in list(self._clients):  # stop(), or stuck: at once, no close handshakes
                ws.transport.abort()
            player.cancel()
            await asyncio.wait({player}, timeout=self.send_timeout_s)
            server.close()

    def start(self, timeout: float = 10.0) -> int:
        """Run :meth:`serve` in a background thread; the bound port once it listens."""

        def main() -> None:
            try:
                asyncio.run(self.serve())
            except BaseException as err:  # raised again by start()
                self._error = err

        self._thread = threading.Thread(target=main, name="tickpool-feed-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.listening.wait(0.02):
            if self._error is not None:
                raise self._error
            if time.monotonic() > deadline:
                raise TimeoutError(f"feed server did not start listening in {timeout} s")
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        """End :meth:`serve` (started here or by :meth:`start`): connections closed, port freed."""
        loop, stopping = self._aloop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended in between
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"feed server did not stop in {timeout} s")

    def __enter__(self) -> FeedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connections ----------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """One client: registered for playback; its own messages answered (subscribe)."""
        self.connections += 1
        if self.fmt != "coinbase":  # a Coinbase client gets ticks once it has subscribed
            self._join(ws)
        try:
            async for message in ws:
                await self._answer(ws, message)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(ws)
            if not self._clients and self._present is not None:
                self._present.clear()

    def _join(self, ws: ServerConnection) -> None:
        assert self._present is not None
        self._clients.add(ws)
        self._present.set()

    async def _answer(self, ws: ServerConnection, message: str | bytes) -> None:
        if self.fmt != "coinbase":
            return
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            return
        if isinstance(request, dict) and request.get("type") == "subscribe":
            reply = {"type": "subscriptions", "channels": request.get("channels", [])}
            await ws.send(orjson.dumps(reply).decode())
            self._join(ws)

    async def _send(self, frame: str, ticks: int) -> None:
        """``frame`` (holding ``ticks`` ticks) to each client in turn; closed ones are dropped."""
        for ws in list(self._clients):
            try:
                async with asyncio.timeout(self.send_timeout_s):  # (3.11's wait_for eats cancels)
                    await ws.send(frame)
            except ConnectionClosed:
                self._clients.discard(ws)
                continue
            except TimeoutError:
                # Stuck, and maybe mid-frame: close the socket, so the client sees the
                # connection drop and reconnects (rather than wait forever on an open socket).
                self._clients.discard(ws)
                self.clients_timed_out += 1
                log.warning("a client took no frame for %s s: disconnected", self.send_timeout_s)
                ws.transport.abort()
                continue
            self.frames_sent += 1
            self.ticks_sent += ticks

    def _drop_all(self) -> None:
        """Abort every connection (no close handshake), as a network failure would."""
        log.warning("dropping %d connection(s) after %d ticks", len(self._clients), self.ticks_sent)
        for ws in list(self._clients):
            ws.transport.abort()
        self._clients.clear()
        assert self._present is not None
        self._present.clear()

    # -- playback -------------------------------------------------------------------------------

    def _passes(self) -> Iterator[_Rows]:
        """The file's rows as lists, batch by batch; forever (ts shifted) with ``loop``."""
        shift = 0
        while True:
            first = last = None
            for piece in iter_tick_batches(self.path):
                rows = self._rows(piece.batch, shift)
                if not rows.ts:
                    continue
                first = rows.ts[0] if first is None else first
                last = rows.ts[-1]
                yield rows
            if not self.loop or first is None or last is None:
                return
            shift += last - first + 1_000_000  # next pass 1 ms after this one's last tick

    def _rows(self, batch: pa.RecordBatch, shift: int) -> _Rows:
        names = batch.schema.names
        for need in ("ts", "symbol", self.value):
            if need not in names:
                raise ValueError(f"{self.path}: no column {need!r} to serve (columns: {names})")
        ts = batch.column("ts")
        if pa.types.is_timestamp(ts.type):
            ts = ts.cast(pa.timestamp("ns", tz="UTC"))
        ts_ns = pc.add(ts.cast(pa.int64()), shift) if shift else ts.cast(pa.int64())
        time_text = None
        if self.fmt == "coinbase":
            as_us: Any = ts_ns.cast(pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("us", tz="UTC"))
            time_text = pc.strftime(as_us, format="%Y-%m-%dT%H:%M:%S", locale="C").to_pylist()
            time_text = [None if t is None else f"{t}Z" for t in time_text]
        size: list[Any] = (
            batch.column("size").cast(pa.float64()).to_pylist()
            if "size" in names
            else [None] * batch.num_rows
        )
        return _Rows(
            ts=ts_ns.to_pylist(),
            symbol=batch.column("symbol").cast(pa.string()).to_pylist(),
            price=batch.column(self.value).cast(pa.float64()).to_pylist(),
            size=size,
            time_text=time_text,
        )

    def _frame(self, rows: _Rows, i: int, j: int) -> str:
        """Rows ``i:j`` as one text frame in the configured format."""
        if self.fmt == "coinbase":
            assert rows.time_text is not None
            size = rows.size[i]
            return orjson.dumps(
                {
                    "type": "ticker",
                    "sequence": self.ticks_sent,
                    "product_id": rows.symbol[i],
                    "price": repr(rows.price[i]),
                    "last_size": None if size is None else repr(size),
                    "time": rows.time_text[i],
                }
            ).decode()
        stamp = time.time_ns() if self.stamp_send_time else None
        ticks = [
            {
                "ts": rows.ts[k] if stamp is None else stamp,
                "symbol": rows.symbol[k],
                "price": rows.price[k],
                "size": rows.size[k],
            }
            for k in range(i, j)
        ]
        return orjson.dumps(ticks[0] if self.batch == 1 else ticks).decode()

    async def _play(self) -> None:
        assert self._present is not None
        loop = asyncio.get_running_loop()
        anchor: tuple[float, int] | None = None  # (loop time, ts) that pacing counts from
        scale = 1.0 / (self.speed * 1e9) if self.speed > 0 else 0.0
        frames = 0
        for rows in self._passes():
            n = len(rows.ts)
            i = 0
            while i < n:
                if not self._clients:
                    anchor = None  # paused: pacing restarts from the next tick sent
                    self._present.clear()  # (a failed send may have emptied the set)
                    await self._present.wait()
                    continue
                now = loop.time()
                j = i + 1
                if scale and rows.ts[i] is not None:
                    if anchor is None:
                        anchor = (now, rows.ts[i])
                    due = anchor[0] + (rows.ts[i] - anchor[1]) * scale
                    if due > now:
                        await asyncio.sleep(due - now)
                        continue
                    limit = anchor[1] + (now - anchor[0]) / scale
                    while j < n and j - i < self.batch and (rows.ts[j] or 0) <= limit:
                        j += 1
                else:
                    j = min(n, i + self.batch)
                await self._send(self._frame(rows, i, j), j - i)
                frames += 1
                i = j
                if self.drop_after is not None and self.ticks_sent >= self.drop_after:
                    self.drop_after = None
                    self._drop_all()
                if not scale and frames % 256 == 0:
                    await asyncio.sleep(0)  # let connections and stop() run
        self.finished.set()
        log.info("end of %s: %d ticks sent", self.path, self.ticks_sent)


def _bound_port(server: Server) -> int:
    for sock in server.sockets:
        return int(sock.getsockname()[1])
    raise RuntimeError("the feed server has no listening socket")
