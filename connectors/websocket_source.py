"""``WebSocketSource``: a live WebSocket feed as ``TickBatch`` items (and source dead letters).

How it runs
-----------
A background thread runs an asyncio client (the ``websockets`` library): connect, send the
optional subscribe message, read frames, put each into a **bounded** queue. The Bytewax worker
calls ``next_batch``, which drains at most ``max_rows`` frames from the queue without waiting,
parses them (:class:`~tickpool.connectors.feed_messages.FeedParser`) and feeds a
:class:`~tickpool.connectors.feed_messages.MicroBatcher`; a batch is emitted as soon as it has
``max_rows`` ticks or its oldest tick is ``max_latency_ms`` old. ``next_awake`` asks Bytewax to
call again when the queue has more, at the batcher's deadline, or after a short idle poll
(at most 5 ms), so an idle feed costs little CPU and adds at most that poll to latency.

The items are ``TickBatch`` (``source`` = the feed's name, ``index`` = the batch's sequence number
in this run) and, for messages that cannot be mapped, :class:`~tickpool.operators.items.DeadLetter`
(``batch`` = the frame's sequence number, ``row`` = the element of an array frame, ``value`` = the
raw text, cut short). :func:`tickpool.pipeline.flow.build_feed_flow` branches the two: dead letters
go straight to the dead-letter sink, and their count joins the statistics records (``feed_*``
fields), so ``processed + dead-lettered = received`` holds for the whole run.

Policies
--------
- **Full queue**: the queue is bounded twice, in frames (``queue_size``) and in bytes
  (``queue_bytes``, the frames' lengths: bytes of binary frames, characters of text frames);
  it is full when either bound is reached (a frame always enters an empty queue, and
  ``queue_bytes >= max_message_bytes`` is required, so the bytes bound holds). ``block``
  (``when_full``, default) stops reading the socket until the flow has drained enough; the
  library then stops reading TCP once its own small buffer (``max_queue`` = 16 frames) is full,
  so the server sees backpressure and nothing is lost (keepalive pings are still answered: the
  wait is an ``await``, not a blocked loop). ``drop-oldest`` keeps reading and drops the oldest
  queued frames until the new one fits under both bounds, counting the drops (``feed_dropped``):
  fresh data wins, as for a display. Memory for frames in flight is therefore at most about
  ``queue_bytes`` + 16 x ``max_message_bytes`` (32 MiB + 16 MiB by default).
- **Bad messages** (``bad_rows``): ``drop`` (default) turns each into a dead letter;
  ``error`` ends the run at the first one with a one-line error naming the message and what
  was expected. An unexpected exception while parsing a message is a dead letter too
  (``cannot map message: ...``), never the end of the run.
- **Oversize messages**: the library enforces ``max_message_bytes`` while reading (it never
  buffers a bigger frame) and closes the connection with code 1009. That message is recorded as
  one dead letter (reason says so, no raw text: it was never read whole), counted
  (``feed_oversize``), and the source reconnects.
- **Reconnects**: any connection loss or failed connect is logged (``logging``, WARNING) and
  retried after ``min(reconnect_max_s, reconnect_initial_s * 2**attempt)`` seconds times a random
  factor in [0.5, 1] ("equal jitter": spread out, never zero); the attempt count resets once a
  message arrives. ``feed_reconnects`` counts connections opened after the first. An HTTP 4xx
  answer to the handshake (wrong path, bad credentials) is not retried: the run ends with an
  error naming the URL and the status; so does a run that stops without ever having connected.
- **URLs in logs**: the URL's user-info, query and fragment (where tokens live) are left out of
  logs, errors, the ``source`` of batches and dead letters (see :func:`redact_url`).

Why a ``FixedPartitionedSource`` with one partition
---------------------------------------------------
A ``DynamicSource`` builds one partition *per worker*: with ``--workers 2`` that is two
connections to the same feed, so every tick twice. A fixed partition (key ``feed``) exists once
in the whole cluster, on one worker; the flow's shard step spreads its batches over the workers.
It also gives the partition a snapshot: ``(frames consumed, batches emitted)``, so after a
restart with recovery the sequence numbers in dead letters and batches go on rather than repeat.
A live socket cannot rewind, though: ticks that arrived between the last snapshot and a crash
are gone (at-most-once across a crash; exactly-once needs a replayable feed such as Kafka).

Stopping
--------
The partition ends (so the flow reaches EOF: final statistics records, sinks closed) when the
``stop`` event is set (``tickpool feed`` sets it on Ctrl-C / SIGTERM), after ``duration_s``, or
after ``max_ticks`` records (ticks plus dead-lettered messages). On a stop it first stops the
reader, then drains every frame already queued, so nothing read is left unaccounted; only with
``max_ticks`` are the frames beyond the limit discarded (counted in ``feed_discarded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, TypeAlias
from urllib.parse import urlsplit

import orjson
import websockets
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tickpool.connectors.feed_messages import (
    PRESETS,
    FeedParser,
    MicroBatcher,
    Rejected,
    dead_letter,
    raw_text,
    tick_schema,
)
from tickpool.operators.items import DeadLetter, TickBatch

__all__ = [
    "FeedConfig",
    "FeedCounters",
    "FeedError",
    "FeedItem",
    "FeedPosition",
    "WebSocketSource",
    "redact_url",
]

log = logging.getLogger(__name__)

FeedItem: TypeAlias = TickBatch | DeadLetter
"""What the source emits: batches of ticks, and dead letters for unmappable messages."""

FeedPosition: TypeAlias = tuple[int, int]
"""``(frames consumed, batches emitted)``: the partition's snapshot (sequence numbers only)."""

WhenFull: TypeAlias = Literal["block", "drop-oldest"]
BadRows: TypeAlias = Literal["drop", "error"]

_PARTITION: Final = "feed"
_IDLE_POLL_S: Final = 0.005
_STOP_JOIN_S: Final = 5.0
_CLOSE_CODE_TOO_BIG: Final = 1009
_LIBRARY_QUEUE_FRAMES: Final = 16
"""websockets' own receive buffer (``max_queue``): frames it reads ahead of us."""


class FeedError(RuntimeError):
    """The feed cannot go on: a refused handshake, no connection ever, or a bad message under
    ``bad_rows="error"``. The text is one line for the user."""


def redact_url(url: str) -> str:
    """``url`` without user-info, query and fragment (where credentials and tokens go).

    >>> redact_url("wss://user:secret@feed.example.com:443/v1/ticks?token=abc#x")
    'wss://feed.example.com:443/v1/ticks'
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


@dataclass(frozen=True)
class FeedConfig:
    """Settings of one WebSocket feed, validated at construction.

    Attributes:
        url: ``ws://`` or ``wss://`` URL.
        preset: message field mapping, ``generic`` or ``coinbase``.
        subscribe: JSON text sent after each connect (e.g. a Coinbase ``subscribe``), or None.
        max_rows: ticks per batch at most.
        max_latency_ms: a tick waits at most this long in the batcher.
        queue_size: frames the socket-to-flow queue holds.
        queue_bytes: bytes (characters of text frames) the queue holds; >= max_message_bytes.
        when_full: ``block`` the reader or ``drop-oldest`` (counted) when the queue is full
            (either bound reached).
        max_message_bytes: larger frames close the connection (1009) and become a dead letter.
        bad_rows: ``drop`` (dead letters) or ``error`` (the first bad message ends the run).
        max_ticks: end the run after this many records (ticks + dead letters); None: never.
        duration_s: end the run after this many seconds; None: never.
        reconnect_initial_s, reconnect_max_s: exponential backoff bounds between reconnects.
        open_timeout_s: give up on one connect attempt after this long (then back off).
        name: the ``source`` of batches and dead letters (default: the URL without user-info,
            query and fragment).
    """

    url: str
    preset: str = "generic"
    subscribe: str | None = None
    max_rows: int = 4096
    max_latency_ms: float = 50.0
    queue_size: int = 65_536
    queue_bytes: int = 32 << 20
    when_full: WhenFull = "block"
    max_message_bytes: int = 1 << 20
    bad_rows: BadRows = "drop"
    max_ticks: int | None = None
    duration_s: float | None = None
    reconnect_initial_s: float = 0.1
    reconnect_max_s: float = 10.0
    open_timeout_s: float = 10.0
    name: str = ""

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.url)
            redact_url(self.url)
        except ValueError as err:  # e.g. an unclosed [IPv6] host; the text may hold a token
            msg = f"feed url must be ws://host[:port]/... or wss://...; it does not parse: {err}"
            raise ValueError(msg) from None
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            msg = (
                f"feed url must be ws://host[:port]/... or wss://...; got {redact_url(self.url)!r}"
            )
            raise ValueError(msg)
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        if self.subscribe is not None:
            try:
                orjson.loads(self.subscribe)
            except orjson.JSONDecodeError as err:
                msg = f"subscribe must be JSON text; got {self.subscribe!r}: {err}"
                raise ValueError(msg) from None
        for name in ("max_rows", "queue_size", "queue_bytes", "max_message_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if self.queue_bytes < self.max_message_bytes:
            raise ValueError(
                f"queue_bytes ({self.queue_bytes:,}) must be >= max_message_bytes "
                f"({self.max_message_bytes:,}): the queue must hold the largest message"
            )
        if self.bad_rows not in ("drop", "error"):
            raise ValueError(f"bad_rows must be 'drop' or 'error'; got {self.bad_rows!r}")
        if self.max_ticks is not None and (
            isinstance(self.max_ticks, bool) or not isinstance(self.max_ticks, int)
        ):
            raise ValueError(f"max_ticks must be an integer >= 1 or None; got {self.max_ticks!r}")
        if self.max_ticks is not None and self.max_ticks < 1:
            raise ValueError(f"max_ticks must be an integer >= 1 or None; got {self.max_ticks!r}")
        if self.when_full not in ("block", "drop-oldest"):
            raise ValueError(f"when_full must be 'block' or 'drop-oldest'; got {self.when_full!r}")
        for name in ("max_latency_ms", "reconnect_initial_s", "reconnect_max_s", "open_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)!r}")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_initial_s "
                f"({self.reconnect_initial_s})"
            )
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0 seconds or None; got {self.duration_s!r}")
        if not self.name:
            object.__setattr__(self, "name", redact_url(self.url))

    def backoff_s(self, attempt: int, rand: float) -> float:
        """Seconds to wait before reconnect ``attempt`` (0-based), ``rand`` uniform in [0, 1).

        >>> cfg = FeedConfig("ws://h", reconnect_initial_s=0.1, reconnect_max_s=1.0)
        >>> [round(cfg.backoff_s(a, 0.999), 3) for a in range(6)]
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
        >>> cfg.backoff_s(3, 0.0)
        0.4
        """
        cap = min(self.reconnect_max_s, self.reconnect_initial_s * 2.0 ** min(attempt, 62))
        return cap * (0.5 + 0.5 * rand)


@dataclass
class FeedCounters:
    """What the feed did, process-wide; each field is written by one thread only.

    The reader thread writes ``connects``, ``reconnects``, ``oversize``, ``dropped`` and
    ``discarded_at_stop``; the Bytewax worker writes the rest. Reads from other threads
    (statistics) see a consistent-enough view: each value is a plain int.
    """

    frames: int = 0
    ticks: int = 0
    rejected: int = 0
    ignored: int = 0
    discarded: int = 0
    dropped: int = 0
    oversize: int = 0
    connects: int = 0
    reconnects: int = 0
    discarded_at_stop: int = 0

    def as_stats(self) -> dict[str, int]:
        """The counters as ``feed_*`` fields for statistics records.

        ``feed_received`` = ``feed_ticks`` + ``feed_rejected``: the records that entered the
        flow (each is processed or dead-lettered); ``feed_discarded`` also holds frames lost
        because the run stopped, ``feed_dropped`` those the drop-oldest policy dropped.
        """
        return {
            "feed_received": self.ticks + self.rejected,
            "feed_ticks": self.ticks,
            "feed_rejected": self.rejected,
            "feed_ignored": self.ignored,
            "feed_frames": self.frames,
            "feed_dropped": self.dropped,
            "feed_discarded": self.discarded + self.discarded_at_stop,
            "feed_oversize": self.oversize,
            "feed_connects": self.connects,
            "feed_reconnects": self.reconnects,
        }


@dataclass(frozen=True, slots=True)
class _Oversize:
    """Queue marker: a frame over the size limit closed the connection."""

    limit: int
    detail: str


_Frame: TypeAlias = str | bytes | _Oversize


def _size(frame: _Frame) -> int:
    """What a frame counts against ``queue_bytes``: its length (0 for a marker)."""
    return 0 if isinstance(frame, _Oversize) else len(frame)


@dataclass
class _FrameQueue:
    """A FIFO of frames bounded in frames and in bytes, shared by the reader thread and the
    worker (one lock). A frame always enters an empty queue.

    A refused :meth:`offer` marks the queue as awaited; the next :meth:`take` that frees space
    then calls ``on_space`` once (outside the lock), so a blocked reader wakes at once instead
    of polling.
    """

    capacity: int
    capacity_bytes: int
    counters: FeedCounters
    nbytes: int = 0
    on_space: Callable[[], None] | None = None
    _awaited: bool = False
    _items: deque[_Frame] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __len__(self) -> int:
        return len(self._items)

    def _full_for(self, size: int) -> bool:
        return bool(self._items) and (
            len(self._items) >= self.capacity or self.nbytes + size > self.capacity_bytes
        )

    def offer(self, frame: _Frame) -> bool:
        """Append unless it does not fit under both bounds; whether it was appended."""
        size = _size(frame)
        with self._lock:
            if self._full_for(size):
                self._awaited = True
                return False
            self._items.append(frame)
            self.nbytes += size
            return True

    def push_dropping_oldest(self, frame: _Frame) -> None:
        """Append, first dropping (and counting) the oldest frames until it fits."""
        size = _size(frame)
        with self._lock:
            while self._full_for(size):
                self.nbytes -= _size(self._items.popleft())
                self.counters.dropped += 1
            self._items.append(frame)
            self.nbytes += size

    def take(self, limit: int | None) -> list[_Frame]:
        """Up to ``limit`` frames (all of them for None), oldest first, without waiting."""
        with self._lock:
            items = self._items
            if limit is None or limit >= len(items):
                out = list(items)
                items.clear()
                self.nbytes = 0
            else:
                out = [items.popleft() for _ in range(limit)]
                self.nbytes -= sum(_size(f) for f in out)
            wake = bool(out) and self._awaited
            if wake:
                self._awaited = False
        if wake and self.on_space is not None:
            self.on_space()
        return out


class _Reader:
    """The background thread: an asyncio WebSocket client that fills the queue."""

    def __init__(self, config: FeedConfig, queue: _FrameQueue, counters: FeedCounters) -> None:
        self._config = config
        self._queue = queue
        self._counters = counters
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._space: asyncio.Event | None = None
        """Set (in the loop, from the worker's ``take``) when a full queue has room again."""
        self._ready = threading.Event()
        self._stopping = False
        self.fatal: str | None = None
        """Why the reader gave up for good (set once, by the reader thread), else None."""
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._main, name="tickpool-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(_STOP_JOIN_S)

    def stop(self) -> None:
        """Cancel the client (closing the connection cleanly) and join the thread."""
        self._stopping = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(_STOP_JOIN_S)
        if self._thread.is_alive():
            log.warning("feed %s: reader did not stop in %s s", self._config.name, _STOP_JOIN_S)

    def _main(self) -> None:
        # asyncio.Runner tears down completely: remaining tasks cancelled and awaited, async
        # generators and the default executor shut down, then the loop closed.
        try:
            with asyncio.Runner() as runner:
                self._loop = runner.get_loop()
                runner.run(self._supervise())
        except asyncio.CancelledError:
            pass
        finally:
            self._ready.set()

    async def _supervise(self) -> None:
        self._task = asyncio.current_task()
        self._space = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._queue.on_space = lambda: self._wake(loop)
        self._ready.set()
        await self._run()

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the worker thread: the queue has room; wake a reader blocked in :meth:`_put`."""
        space = self._space
        if space is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                loop.call_soon_threadsafe(space.set)

    async def _run(self) -> None:
        cfg = self._config
        attempt = 0
        while not self._stopping:
            try:
                async with connect(
                    cfg.url,
                    max_size=cfg.max_message_bytes,
                    open_timeout=cfg.open_timeout_s,
                    close_timeout=1.0,
                    compression=None,  # ticks are small; deflate would cost more CPU than bytes
                    max_queue=_LIBRARY_QUEUE_FRAMES,
                ) as ws:
                    if self._counters.connects:
                        self._counters.reconnects += 1
                        log.warning("feed %s: reconnected", cfg.name)
                    else:
                        log.info("feed %s: connected", cfg.name)
                    self._counters.connects += 1
                    if cfg.subscribe is not None:
                        await ws.send(cfg.subscribe)
                    async for message in ws:
                        attempt = 0
                        await self._put(message)
                reason = "the server closed the connection"
            except ConnectionClosed as err:
                sent = err.sent
                # Ours only if we closed first: a server's 1009 that we echoed is not a frame
                # of ours over the limit (rcvd_then_sent is None when one side sent no close).
                if sent is not None and sent.code == _CLOSE_CODE_TOO_BIG and not err.rcvd_then_sent:
                    self._counters.oversize += 1
                    await self._put(_Oversize(cfg.max_message_bytes, sent.reason))
                reason = f"connection lost ({err})"
            except websockets.InvalidStatus as err:
                status = err.response.status_code
                reason = f"cannot connect (HTTP {status})"
                if 400 <= status < 500:  # wrong path or credentials: retrying will not help
                    self.fatal = (
                        f"feed {redact_url(cfg.url)}: the server refused the WebSocket handshake "
                        f"with HTTP {status} {err.response.reason_phrase}".rstrip()
                    )
                    log.error("%s", self.fatal)
                    return
            except (OSError, TimeoutError, websockets.InvalidHandshake) as err:
                reason = f"cannot connect ({type(err).__name__}: {err})"
            except Exception as err:  # a bug or an odd server must not end the feed silently
                log.exception("feed %s: unexpected error", cfg.name)
                reason = f"unexpected error ({type(err).__name__}: {err})"
            reason = reason.replace(cfg.url, redact_url(cfg.url))  # no tokens in logs
            self.last_error = reason
            if self._stopping:
                break
            delay = cfg.backoff_s(attempt, random.random())
            attempt += 1
            log.warning(
                "feed %s: %s; reconnecting in %.2f s (attempt %d)", cfg.name, reason, delay, attempt
            )
            await asyncio.sleep(delay)

    async def _put(self, frame: _Frame) -> None:
        """Queue one frame by the full-queue policy (``block`` waits without blocking the loop)."""
        if self._config.when_full == "drop-oldest":
            self._queue.push_dropping_oldest(frame)
            return
        space = self._space
        assert space is not None, "the reader's loop is running"
        try:
            # A refused offer marks the queue awaited, so the next take() that frees room sets
            # ``space`` (through call_soon_threadsafe): no lost wake-up, no polling.
            while not self._queue.offer(frame):
                await space.wait()
                space.clear()
        except asyncio.CancelledError:
            self._counters.discarded_at_stop += 1
            raise


class _FeedPartition(StatefulSourcePartition[FeedItem, FeedPosition]):
    """The one feed partition: reader thread, queue, parser, batcher; position = counters."""

    def __init__(
        self,
        config: FeedConfig,
        counters: FeedCounters,
        schema_names: tuple[str, str, str],
        resume_state: FeedPosition | None,
        stop: threading.Event | None,
    ) -> None:
        self._config = config
        self._counters = counters
        self._frames, self._batches = (0, 0) if resume_state is None else resume_state
        self._parser = FeedParser(config.preset)
        self._batcher = MicroBatcher(
            config.max_rows, config.max_latency_ms, schema=tick_schema(*schema_names)
        )
        self._poll_s = min(_IDLE_POLL_S, config.max_latency_ms / 4000.0)
        self._stop = stop
        self._ends_at = None if config.duration_s is None else time.monotonic() + config.duration_s
        self._done = False
        self._queue = _FrameQueue(config.queue_size, config.queue_bytes, counters)
        self._reader: _Reader | None = _Reader(config, self._queue, counters)
        self._reader.start()

    def queued(self) -> tuple[int, int]:
        """Frames and bytes waiting in the queue now."""
        return len(self._queue), self._queue.nbytes

    def _records(self) -> int:
        return self._counters.ticks + self._counters.rejected

    def _stopping(self, now: float) -> bool:
        cfg = self._config
        return (
            (self._stop is not None and self._stop.is_set())
            or (self._ends_at is not None and now >= self._ends_at)
            or (cfg.max_ticks is not None and self._records() >= cfg.max_ticks)
        )

    def _stop_reader(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None

    def _consume(self, frame: _Frame, out: list[FeedItem]) -> None:
        """Parse one frame into the batcher (emitting full batches) or into dead letters."""
        c = self._counters
        seq = self._frames
        self._frames += 1
        c.frames += 1
        name = self._config.name
        if isinstance(frame, _Oversize):
            reason = (
                f"message over max_message_bytes={frame.limit:,}: the connection was closed "
                f"(1009) and reopened; {frame.detail}"
            )
            if self._config.bad_rows == "error":
                self._stop_reader()
                raise FeedError(f"feed {name}: message {seq}: {reason} (--bad-rows error)")
            out.append(dead_letter(name, seq, None, reason, None))
            c.rejected += 1
            return
        try:
            ticks, errors = self._parser.parse_frame(frame)
        except Exception as err:  # a parser bug must cost one message, not the run
            ticks, errors = [], [Rejected(None, f"cannot map message: {type(err).__name__}: {err}")]
        if errors and self._config.bad_rows == "error":
            self._stop_reader()
            bad = errors[0]
            where = (
                f"message {seq}" if bad.element is None else f"message {seq}, element {bad.element}"
            )
            shown = raw_text(bad.raw if bad.raw is not None else frame) or ""
            msg = f"feed {name}: {where}: {bad.reason} (message {shown[:80]!r}; --bad-rows error)"
            raise FeedError(msg.replace("\n", " "))
        add = self._batcher.add
        for tick in ticks:
            full = add(*tick)
            if full is not None:
                out.append(TickBatch(full, name, self._batches))
                self._batches += 1
        c.ticks += len(ticks)
        for element, reason, raw in errors:
            out.append(dead_letter(name, seq, element, reason, frame if raw is None else raw))
        c.rejected += len(errors)
        if not ticks and not errors:
            c.ignored += 1

    @override
    def next_batch(self) -> list[FeedItem]:
        if self._done:
            raise StopIteration
        reader = self._reader
        if reader is not None and reader.fatal is not None:
            self._stop_reader()
            raise FeedError(reader.fatal)
        now = time.monotonic()
        stopping = self._stopping(now)
        if stopping and reader is not None and self._counters.connects == 0:
            self._stop_reader()
            why = "" if reader.last_error is None else f"; last error: {reader.last_error}"
            raise FeedError(f"feed {self._config.name}: stopped without ever connecting{why}")
        if stopping:
            self._stop_reader()  # nothing more arrives: the queue below is all there is
        frames = self._queue.take(None if stopping else self._config.max_rows)
        out: list[FeedItem] = []
        limit = self._config.max_ticks
        for i, frame in enumerate(frames):
            if limit is not None and self._records() >= limit:
                self._counters.discarded += len(frames) - i
                stopping = True
                break
            self._consume(frame, out)
        if limit is not None and self._records() >= limit:
            stopping = True
        last = self._batcher.flush() if stopping else self._batcher.poll()
        if last is not None:
            out.append(TickBatch(last, self._config.name, self._batches))
            self._batches += 1
        if stopping:
            self._stop_reader()
            self._counters.discarded += len(self._queue.take(None))
            self._done = True
            log.info("feed %s: stopped; %s", self._config.name, self._counters.as_stats())
        return out

    @override
    def next_awake(self) -> datetime | None:
        if self._done or len(self._queue):
            return None
        now = time.monotonic()
        wake = now + self._poll_s
        deadline = self._batcher.deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        if self._ends_at is not None:
            wake = min(wake, self._ends_at)
        return datetime.now(UTC) + timedelta(seconds=max(0.0, wake - now))

    @override
    def snapshot(self) -> FeedPosition:
        return (self._frames, self._batches)

    @override
    def close(self) -> None:
        self._stop_reader()


class WebSocketSource(FixedPartitionedSource[FeedItem, FeedPosition]):
    """A WebSocket feed of JSON ticks as ``TickBatch`` items and source dead letters.

    One partition (``feed``) in the whole cluster: see the module docstring for why, for the
    queue, oversize and reconnect policies, and for how a run stops.

    Args:
        config: the feed's settings.
        ts_column, symbol_column, value_column: the batch's column names (as the window job
            reads them); the fourth column is ``size``.
        stop: set it (from a signal handler, another thread) to end the run cleanly.

    Attributes:
        counters: what the feed did (for statistics records and summaries).
    """

    def __init__(
        self,
        config: FeedConfig,
        *,
        ts_column: str = "ts",
        symbol_column: str = "symbol",
        value_column: str = "price",
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.counters = FeedCounters()
        self._names = (ts_column, symbol_column, value_column)
        self._stop = stop

    def stats(self) -> Mapping[str, int]:
        """The ``feed_*`` fields for statistics records (see :meth:`FeedCounters.as_stats`)."""
        return self.counters.as_stats()

    @override
    def list_parts(self) -> list[str]:
        return [_PARTITION]

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: FeedPosition | None
    ) -> _FeedPartition:
        return _FeedPartition(self.config, self.counters, self._names, resume_state, self._stop)
