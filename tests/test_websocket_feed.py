"""The live WebSocket feed end to end, on loopback: accounting, replay equivalence, reconnects,
garbage, queue policies, Ctrl-C, and the feed simulator itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from bytewax.testing import run_main
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tickpool.connectors.arrow_source import iter_tick_batches
from tickpool.connectors.feed_messages import parse_iso_ns
from tickpool.connectors.feed_server import FeedServer
from tickpool.connectors.synthetic import write_ticks
from tickpool.connectors.websocket_source import (
    FeedConfig,
    FeedCounters,
    FeedItem,
    WebSocketSource,
    _FrameQueue,
    _Reader,
)
from tickpool.operators.items import TickBatch
from tickpool.pipeline.cli import main
from tickpool.pipeline.config import PipelineConfig
from tickpool.pipeline.flow import RunObserver, build_feed_flow

TICKS = 3000


@pytest.fixture(scope="module")
def tick_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("feed") / "ticks.arrow"
    write_ticks(path, TICKS, 3, seed=11, batch_rows=700)
    return path


def file_rows(path: Path) -> list[tuple[int, str, float, float]]:
    table = pa.Table.from_batches([tb.batch for tb in iter_tick_batches(path)])
    return list(
        zip(
            table.column("ts").cast(pa.int64()).to_pylist(),
            table.column("symbol").cast(pa.string()).to_pylist(),
            table.column("price").to_pylist(),
            table.column("size").to_pylist(),
            strict=True,
        )
    )


def predictions_by_symbol(
    out: Path,
) -> dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    files = sorted(out.glob("predictions-*.arrows"))
    assert files, f"no predictions in {out}"
    table = pa.concat_tables(pa.ipc.open_stream(f).read_all() for f in files)
    by: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = {}
    for sym in sorted(set(table.column("symbol").to_pylist())):
        rows = table.filter(pa.compute.equal(table.column("symbol"), sym))
        by[sym] = (rows.column("ts").cast(pa.int64()).to_numpy(), rows.column("yhat").to_numpy())
    return by


def last_stats(path: Path) -> dict[str, Any]:
    lines = path.read_bytes().splitlines()
    assert lines, f"{path} is empty"
    record: dict[str, Any] = orjson.loads(lines[-1])
    return record


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)


JOB = ["--window", "16", "--stride", "1", "--model", "mean", "--normalize", "window-zscore"]


def test_feed_accounts_for_every_tick_and_predicts_as_replay_does(
    tick_file: Path, tmp_path: Path
) -> None:
    with FeedServer(tick_file, speed=0, batch=1) as server:
        url = f"ws://127.0.0.1:{server.port}"
        feed_out = tmp_path / "feed"
        rc = main(
            [
                "feed",
                url,
                *JOB,
                "--max-ticks",
                str(TICKS),
                "--max-rows",
                "97",  # batch cuts unlike the file's: results must not depend on them
                "--out",
                str(feed_out),
                "--stats",
                str(tmp_path / "feed_stats.jsonl"),
                "--dead-letters",
                str(tmp_path / "feed_dead.jsonl"),
                "--quiet",
            ]
        )
        assert rc == 0
        assert server.ticks_sent == TICKS
    replay_out = tmp_path / "replay"
    assert main(["replay", str(tick_file), *JOB, "--out", str(replay_out), "--quiet"]) == 0

    stats = last_stats(tmp_path / "feed_stats.jsonl")
    assert stats["feed_received"] == TICKS
    processed = stats["ticks"] - stats["dead_letters"]
    dead = stats["dead_letters"] + stats["feed_rejected"]
    assert processed + dead == TICKS
    assert processed == TICKS  # the file is clean
    assert stats["leased"] == 0  # every buffer back in the pool at the end
    dead_file = tmp_path / "feed_dead.jsonl"
    assert not dead_file.exists() or dead_file.read_bytes() == b""

    fed, replayed = predictions_by_symbol(feed_out), predictions_by_symbol(replay_out)
    assert fed.keys() == replayed.keys()
    assert sum(len(ts) for ts, _ in fed.values()) == TICKS - 3 * 15
    for sym, (ts, yhat) in replayed.items():
        np.testing.assert_array_equal(fed[sym][0], ts)
        np.testing.assert_allclose(fed[sym][1], yhat, rtol=1e-12, atol=0)


@dataclass(frozen=True)
class Close:
    """A script step: the server closes the connection with this code."""

    code: int
    reason: str = ""


class ScriptedServer:
    """A WebSocket server that sends ``scripts[k]`` on its k-th connection, then waits
    (or closes, at a :class:`Close` step)."""

    def __init__(self, scripts: Sequence[Sequence[str | bytes | Close]]) -> None:
        self.scripts = scripts
        self.connections = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _handler(self, ws: ServerConnection) -> None:
        k = self.connections
        self.connections += 1
        try:
            for frame in self.scripts[k] if k < len(self.scripts) else []:
                if isinstance(frame, Close):
                    await ws.close(frame.code, frame.reason)
                    return
                await ws.send(frame)
            await ws.wait_closed()
        except ConnectionClosed:
            pass

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, max_size=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def tick(i: int, symbol: str = "A") -> str:
    return orjson.dumps({"ts": 1_000 + i, "symbol": symbol, "price": 100.0 + i % 7}).decode()


def test_garbage_burst_goes_to_dead_letters_and_an_oversize_frame_reconnects(
    tmp_path: Path,
) -> None:
    garbage: list[str | bytes] = [
        "not json at all",
        b"\x00\xff\xfe binary junk",
        "[1, 2, 3]",
        '{"ts": "yesterday", "symbol": "A", "price": 1}',
        '{"ts": 5, "symbol": "", "price": 1}',
        '{"ts": 5, "symbol": "A", "price": "abc"}',
        '{"ts": 5, "symbol": "A"}',
        "{" * 300,
    ]
    first = [tick(i) for i in range(40)] + garbage + [tick(i) for i in range(40, 60)]
    oversize = orjson.dumps({"ts": 1, "symbol": "A", "price": 1.0, "pad": "x" * 5000}).decode()
    second = [tick(i) for i in range(60, 100)]
    rejects = len(garbage) + 2 + 1  # [1, 2, 3] is three bad ticks; then the oversize frame
    records = 100 + rejects
    with ScriptedServer([[*first, oversize], second]) as server:
        rc = main(
            [
                "feed",
                f"ws://127.0.0.1:{server.port}",
                "--window",
                "4",
                "--max-ticks",
                str(records),
                "--max-message-bytes",
                "1000",
                "--max-latency-ms",
                "5",
                "--out",
                str(tmp_path / "out"),
                "--stats",
                str(tmp_path / "stats.jsonl"),
                "--dead-letters",
                str(tmp_path / "dead.jsonl"),
                "--quiet",
            ]
        )
        assert rc == 0
        assert server.connections == 2
    stats = last_stats(tmp_path / "stats.jsonl")
    assert stats["ticks"] == 100
    assert stats["dead_letters"] == 0
    assert stats["feed_rejected"] == rejects
    assert stats["feed_oversize"] == 1
    assert stats["feed_reconnects"] == 1
    assert stats["feed_received"] == records
    dead = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert len(dead) == rejects
    by_raw = {d["value"]: d for d in dead}
    assert "malformed JSON" in by_raw["not json at all"]["reason"]
    assert "\ufffd" in next(v for v in by_raw if v and v.startswith("\x00"))
    assert "is not ISO-8601" in by_raw['{"ts": "yesterday", "symbol": "A", "price": 1}']["reason"]
    assert "missing field 'price'" in by_raw['{"ts": 5, "symbol": "A"}']["reason"]
    assert all(d["source"] == f"ws://127.0.0.1:{server.port}" for d in dead)
    assert sorted({d["batch"] for d in dead if d["value"] is not None}) == list(range(40, 48))
    # An array frame's bad elements are dead letters carrying the element, not the frame.
    elements = [d for d in dead if d["batch"] == 42]
    assert [(d["row"], d["value"]) for d in elements] == [(0, "1"), (1, "2"), (2, "3")]
    assert all("array element is int" in d["reason"] for d in elements)
    (too_big,) = [d for d in dead if d["value"] is None]
    assert "max_message_bytes=1,000" in too_big["reason"]
    assert by_raw["{" * 300]["value"] == "{" * 300
    predicted = predictions_by_symbol(tmp_path / "out")["A"][0]
    assert predicted[-1] == 1_000 + 99  # the ticks after the reconnect made it through


def run_feed_until_quiet(
    config: PipelineConfig,
    feed: FeedConfig,
    done: Callable[[RunObserver], bool],
    timeout: float = 15.0,
) -> RunObserver:
    """Run the feed flow here; stop it once ``done`` holds and no rows came for 0.3 s."""
    stop = threading.Event()
    observer = RunObserver()
    flow = build_feed_flow(config, feed, observer=observer, stop=stop)

    def watch() -> None:
        deadline = time.monotonic() + timeout
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            rows = observer.rows_read
            if rows != seen:
                seen, since = rows, time.monotonic()
            elif done(observer) and time.monotonic() - since > 0.3:
                break
            time.sleep(0.02)
        stop.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run_main(flow)
    watcher.join()
    return observer


def test_source_reconnects_after_the_server_drops_the_connection(
    tick_file: Path, tmp_path: Path
) -> None:
    with FeedServer(tick_file, speed=0, drop_after=1200) as server:
        config = PipelineConfig(
            window=8, model="last", out=str(tmp_path / "out"), stats_interval=60
        )
        feed = FeedConfig(
            f"ws://127.0.0.1:{server.port}", max_latency_ms=5, reconnect_initial_s=0.05
        )
        observer = run_feed_until_quiet(config, feed, lambda _o: server.finished.is_set())
        assert server.finished.is_set()
        assert server.connections == 2
        sent_after = server.ticks_sent - 1200
    stats = observer.latest["0"]
    assert stats["feed_reconnects"] == 1
    assert sent_after == TICKS - 1200
    # Ticks in flight when the socket was cut may be lost; every tick sent after is processed.
    assert sent_after <= stats["ticks"] <= TICKS
    assert stats["ticks"] == stats["feed_received"] == observer.rows_read
    last_ts = {sym: ts for ts, sym, _, _ in file_rows(tick_file)}
    for sym, (ts, _) in predictions_by_symbol(tmp_path / "out").items():
        assert ts[-1] == last_ts[sym]


def drain(part: Any, want_ticks: int, timeout: float = 10.0) -> list[FeedItem]:
    items: list[FeedItem] = []
    deadline = time.monotonic() + timeout
    while sum(i.batch.num_rows for i in items if isinstance(i, TickBatch)) < want_ticks:
        assert time.monotonic() < deadline, "feed did not deliver in time"
        items.extend(part.next_batch())
        time.sleep(0.002)
    return items


@pytest.mark.parametrize("policy", ["drop-oldest", "block"])
def test_full_queue_policy(tmp_path: Path, policy: str) -> None:
    sent = 500
    frames: list[str | bytes] = [tick(i) for i in range(sent)]
    with ScriptedServer([frames]) as server:
        feed = FeedConfig(
            f"ws://127.0.0.1:{server.port}",
            queue_size=16,
            when_full=policy,  # type: ignore[arg-type]
            max_latency_ms=1,
        )
        source = WebSocketSource(feed)
        part = source.build_part("feed", "feed", None)
        try:
            if policy == "drop-oldest":
                # Nobody drains: the reader keeps reading and drops the oldest frame each time.
                wait_for(lambda: source.counters.dropped == sent - 16)
                time.sleep(0.05)
                items = drain(part, 16)
                assert source.counters.dropped == sent - 16
                kept = list(range(sent - 16, sent))
            else:
                # Nobody drains: the reader fills the queue to its bound and waits there.
                wait_for(lambda: part.queued()[0] == 16)
                for _ in range(10):
                    time.sleep(0.02)
                    assert part.queued()[0] == 16
                items = drain(part, sent)
                assert source.counters.dropped == 0
                kept = list(range(sent))
        finally:
            part.close()
    batches = [i.batch for i in items if isinstance(i, TickBatch)]
    ts = pa.Table.from_batches(batches).column("ts").cast(pa.int64()).to_pylist()
    assert ts == [1_000 + i for i in kept]
    assert source.counters.as_stats()["feed_dropped"] == sent - len(kept)


def received(url: str, count: int, send: str | None = None) -> list[Any]:
    async def go() -> list[Any]:
        # We stop reading before the server stops sending: do not wait long for its close.
        async with connect(url, close_timeout=0.2) as ws:
            if send is not None:
                await ws.send(send)
            return [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(count)]

    return asyncio.run(go())


def test_simulator_sends_the_files_rows_as_generic_messages(tick_file: Path) -> None:
    with FeedServer(tick_file, speed=0) as server:
        messages = received(f"ws://127.0.0.1:{server.port}", TICKS)
    got = [(m["ts"], m["symbol"], m["price"], m["size"]) for m in messages]
    assert got == file_rows(tick_file)


def test_simulator_batches_due_ticks_into_array_frames(tick_file: Path) -> None:
    with FeedServer(tick_file, speed=0, batch=64) as server:

        async def frames_of_all_ticks() -> list[Any]:
            frames: list[Any] = []
            async with connect(f"ws://127.0.0.1:{server.port}") as ws:
                while sum(len(f) for f in frames) < TICKS:
                    frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
            return frames

        frames = asyncio.run(frames_of_all_ticks())
    # Frames do not span the file's batches (4 x 700 + 200 rows): 11 or 4 frames per batch.
    assert len(frames) == 4 * 11 + 4
    assert all(isinstance(f, list) and 1 <= len(f) <= 64 for f in frames)
    got = [(m["ts"], m["symbol"], m["price"], m["size"]) for f in frames for m in f]
    assert got == file_rows(tick_file)


def test_simulator_speaks_coinbase(tick_file: Path) -> None:
    subscribe = orjson.dumps({"type": "subscribe", "channels": ["ticker"]}).decode()
    with FeedServer(tick_file, speed=0, fmt="coinbase") as server:
        messages = received(f"ws://127.0.0.1:{server.port}", 101, send=subscribe)
    # As from Coinbase: the subscription's reply first, then the ticks.
    assert messages[0] == {"type": "subscriptions", "channels": ["ticker"]}
    tickers = messages[1:]
    assert {m["type"] for m in tickers} == {"ticker"}
    assert [m["sequence"] for m in tickers] == list(range(100))
    for m, (ts, sym, price, size) in zip(tickers, file_rows(tick_file), strict=False):
        assert parse_iso_ns(m["time"]) == ts  # synthetic ts are whole microseconds
        assert (m["product_id"], float(m["price"]), float(m["last_size"])) == (sym, price, size)
        assert isinstance(m["price"], str)


def test_simulator_paces_by_ts(tmp_path: Path) -> None:
    path = tmp_path / "paced.arrow"
    ts = pa.array(np.arange(11, dtype=np.int64) * 100_000_000, pa.timestamp("ns", tz="UTC"))
    table = pa.table({"ts": ts, "symbol": ["A"] * 11, "price": np.arange(11.0)})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    # 1 s of market time at 4x: the last tick comes no sooner than ~0.25 s after the first.
    with FeedServer(path, speed=4.0) as server:

        async def arrivals() -> list[float]:
            async with connect(f"ws://127.0.0.1:{server.port}") as ws:
                out = []
                for _ in range(11):
                    await asyncio.wait_for(ws.recv(), 10)
                    out.append(time.monotonic())
                return out

        times = asyncio.run(arrivals())
    assert times[-1] - times[0] >= 0.2


@pytest.fixture
def cli_env() -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    yield env


def test_ctrl_c_stops_cleanly_with_final_stats_and_closed_outputs(
    tick_file: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    stats_path = tmp_path / "stats.jsonl"
    with FeedServer(tick_file, speed=0, loop=True) as server:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tickpool.pipeline.cli",
                "feed",
                f"ws://127.0.0.1:{server.port}",
                "--window",
                "8",
                "--out",
                str(tmp_path / "out"),
                "--stats",
                str(stats_path),
                "--stats-interval",
                "60",
                "--quiet",
            ],
            env=cli_env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: server.ticks_sent > 5000, timeout=30)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "SIGINT: finishing the batches in flight" in err
    stats = last_stats(stats_path)  # written at EOF, i.e. only on a clean stop
    assert stats["ticks"] == stats["feed_received"] > 5000 - 1
    assert stats["leased"] == 0
    # The Arrow stream was closed (end-of-stream marker written) and reads whole.
    data = (tmp_path / "out" / "predictions-0.arrows").read_bytes()
    assert data.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    assert pa.ipc.open_stream(data).read_all().num_rows == stats["predictions"]


def test_coinbase_preset_feed_subscribes_and_ignores_control_messages(
    tick_file: Path, tmp_path: Path
) -> None:
    subscribe = orjson.dumps({"type": "subscribe", "channels": ["ticker"]}).decode()
    with FeedServer(tick_file, speed=0, fmt="coinbase") as server:
        rc = main(
            [
                "feed",
                f"ws://127.0.0.1:{server.port}",
                "--preset",
                "coinbase",
                "--subscribe",
                subscribe,
                "--window",
                "8",
                "--max-ticks",
                "1000",
                "--stats",
                str(tmp_path / "stats.jsonl"),
                "--quiet",
            ]
        )
    assert rc == 0
    stats = last_stats(tmp_path / "stats.jsonl")
    assert stats["feed_ignored"] == 1  # the subscriptions reply: not a tick, not a dead letter
    assert stats["feed_rejected"] == 0
    assert stats["ticks"] == stats["feed_received"] == 1000


def test_block_holds_the_queue_at_its_byte_bound_and_loses_nothing() -> None:
    sent = 2000
    frames: list[str | bytes] = [tick(i) for i in range(sent)]
    size = len(frames[0])  # every frame is as long (ts and prices have the same digits)
    assert all(len(f) == size for f in frames[:1000])
    with ScriptedServer([frames]) as server:
        feed = FeedConfig(
            f"ws://127.0.0.1:{server.port}",
            queue_size=100_000,  # the frame bound is far off: the byte bound must hold
            queue_bytes=40 * size + size // 2,
            max_message_bytes=1000,
            max_latency_ms=1,
        )
        source = WebSocketSource(feed)
        part = source.build_part("feed", "feed", None)
        try:
            wait_for(lambda: part.queued()[0] == 40)
            for _ in range(10):
                time.sleep(0.02)
                assert part.queued() == (40, 40 * size)
            items = drain(part, sent)
        finally:
            part.close()
    batches = [i.batch for i in items if isinstance(i, TickBatch)]
    ts = pa.Table.from_batches(batches).column("ts").cast(pa.int64()).to_pylist()
    assert ts == [1_000 + i for i in range(sent)]
    assert source.counters.dropped == 0


def test_drop_oldest_drops_until_under_the_byte_bound() -> None:
    frames: list[str | bytes] = [tick(i) for i in range(300)]
    size = len(frames[0])
    with ScriptedServer([frames]) as server:
        feed = FeedConfig(
            f"ws://127.0.0.1:{server.port}",
            queue_bytes=10 * size,
            max_message_bytes=10 * size,
            when_full="drop-oldest",
        )
        source = WebSocketSource(feed)
        part = source.build_part("feed", "feed", None)
        try:
            wait_for(lambda: source.counters.dropped == 290)
            assert part.queued() == (10, 10 * size)
        finally:
            part.close()


def test_a_coinbase_type_that_is_not_text_is_a_dead_letter_not_a_crash(tmp_path: Path) -> None:
    ticker = {"product_id": "A", "price": "1.5", "time": "2024-01-02T03:04:05Z"}
    frames: list[str | bytes] = [
        orjson.dumps({"type": "ticker", **ticker}).decode(),
        orjson.dumps({"type": ["ticker"], **ticker}).decode(),
        orjson.dumps({"type": {"name": "ticker"}, **ticker}).decode(),
        orjson.dumps({"type": "ticker", **ticker}).decode(),
    ]
    with ScriptedServer([frames]) as server:
        source = WebSocketSource(FeedConfig(f"ws://127.0.0.1:{server.port}", preset="coinbase"))
        part = source.build_part("feed", "feed", None)
        try:
            items = drain(part, 2)
            while source.counters.rejected < 2:
                items.extend(part.next_batch())
        finally:
            part.close()
    letters = [i for i in items if not isinstance(i, TickBatch)]
    assert [d.reason.split(",")[0] for d in letters] == [
        "type is list",
        "type is dict",
    ]


def test_an_unexpected_parser_error_costs_one_message_not_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tickpool.connectors.feed_messages import FeedParser

    real = FeedParser.parse_frame

    def flaky(self: FeedParser, raw: str | bytes) -> Any:
        if "boom" in str(raw):
            raise KeyError("surprise")
        return real(self, raw)

    monkeypatch.setattr(FeedParser, "parse_frame", flaky)
    frames: list[str | bytes] = [tick(0), '{"boom": 1}', tick(1)]
    with ScriptedServer([frames]) as server:
        source = WebSocketSource(FeedConfig(f"ws://127.0.0.1:{server.port}", max_latency_ms=1))
        part = source.build_part("feed", "feed", None)
        try:
            items = drain(part, 2)
        finally:
            part.close()
    (letter,) = [i for i in items if not isinstance(i, TickBatch)]
    assert letter.reason == "cannot map message: KeyError: 'surprise'"
    assert letter.value == '{"boom": 1}' and letter.batch == 1


def test_bad_rows_error_ends_the_feed_with_one_line_naming_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames: list[str | bytes] = [tick(0), '{"ts": 5, "symbol": "A"}', tick(1)]
    with ScriptedServer([frames]) as server:
        rc = main(
            [
                "feed",
                f"ws://127.0.0.1:{server.port}",
                "--window",
                "4",
                "--bad-rows",
                "error",
                "--duration",
                "20",
                "--quiet",
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1] == (
        f"tickpool: error: feed ws://127.0.0.1:{server.port}: message 1: missing field 'price' "
        """(message '{"ts": 5, "symbol": "A"}'; --bad-rows error)"""
    )


def test_a_refused_handshake_fails_fast_and_keeps_the_token_out_of_the_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from http import HTTPStatus

    from websockets.http11 import Request, Response

    def refuse(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(HTTPStatus.FORBIDDEN, "no\n")

    async def serve_forbidden(
        ready: threading.Event, done: threading.Event, port: list[int]
    ) -> None:
        async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=refuse) as s:
            port.append(next(iter(s.sockets)).getsockname()[1])
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.02)

    ready, done, port = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=lambda: asyncio.run(serve_forbidden(ready, done, port)))
    thread.start()
    try:
        assert ready.wait(10)
        t0 = time.monotonic()
        rc = main(["feed", f"ws://user:pw@127.0.0.1:{port[0]}/ticks?token=SECRET", "--quiet"])
        took = time.monotonic() - t0
    finally:
        done.set()
        thread.join(10)
    err = capsys.readouterr().err
    assert rc == 2 and took < 10
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tickpool: error: feed ws://127.0.0.1:{port[0]}/ticks: ")
    assert "HTTP 403" in last
    assert "SECRET" not in err and "pw@" not in err


def test_a_feed_that_never_connects_does_not_exit_quietly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket_closed_port() as port:
        rc = main(["feed", f"ws://127.0.0.1:{port}", "--duration", "0.5", "--quiet"])
    assert rc == 2
    assert "stopped without ever connecting" in capsys.readouterr().err


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port  # nothing listens there now: connects are refused


def test_replay_never_imports_websockets(tick_file: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['websockets'] = None\n"  # any import of it now fails
        "from tickpool.pipeline.cli import main\n"
        f"rc = main(['replay', {str(tick_file)!r}, '--window', '8', '--quiet',"
        f" '--out', {str(tmp_path / 'out')!r}])\n"
        "assert 'websockets' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


def test_simulator_closes_clients_with_1000_at_the_end_of_the_file(tick_file: Path) -> None:
    with FeedServer(tick_file, speed=0) as server:

        async def read_to_the_end() -> tuple[int, ConnectionClosed]:
            n = 0
            async with connect(f"ws://127.0.0.1:{server.port}") as ws:
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                        n += 1
                except ConnectionClosed as closed:
                    return n, closed

        n, closed = asyncio.run(read_to_the_end())
    assert n == TICKS
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "end of file")


def test_a_stuck_client_is_disconnected_so_it_can_reconnect(tick_file: Path) -> None:
    with FeedServer(tick_file, speed=0, loop=True, send_timeout_s=0.2) as server:

        async def stall_then_read() -> str:
            # max_queue=1: the client library stops reading TCP at once, so the server's
            # sends back up and time out.
            async with connect(f"ws://127.0.0.1:{server.port}", max_queue=1) as ws:
                deadline = time.monotonic() + 20
                while server.clients_timed_out == 0:
                    assert time.monotonic() < deadline, "the server never timed out a send"
                    await asyncio.sleep(0.02)
                try:
                    while True:  # what was buffered, then the connection's end
                        await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed:
                    return "closed"
                except TimeoutError:
                    return "left open"

        assert asyncio.run(stall_then_read()) == "closed"
        assert server.clients_timed_out == 1


def test_a_close_with_1009_from_the_server_is_not_an_oversize_message_of_ours() -> None:
    # The server closes with 1009 first and we echo it: err.sent.code is 1009 here too, but no
    # frame of ours went over max_message_bytes, so there is nothing to dead-letter.
    first: list[str | bytes | Close] = [tick(i) for i in range(10)]
    first.append(Close(1009, "the server's own limit"))
    with ScriptedServer([first, [tick(i) for i in range(10, 20)]]) as server:
        feed = FeedConfig(
            f"ws://127.0.0.1:{server.port}", max_latency_ms=1, reconnect_initial_s=0.01
        )
        source = WebSocketSource(feed)
        part = source.build_part("feed", "feed", None)
        try:
            items = drain(part, 20)
        finally:
            part.close()
    assert not [i for i in items if not isinstance(i, TickBatch)]
    assert source.counters.oversize == 0
    assert source.counters.reconnects == 1


def test_a_blocked_reader_wakes_when_the_worker_takes_not_by_polling() -> None:
    counters = FeedCounters()
    queue = _FrameQueue(1, 1 << 20, counters)
    reader = _Reader(FeedConfig("ws://127.0.0.1:1"), queue, counters)
    wakes: list[int] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        reader._space = asyncio.Event()
        queue.on_space = lambda: (wakes.append(1), reader._wake(loop))[-1]
        assert queue.offer("first")
        put = asyncio.create_task(reader._put("second"))
        await asyncio.sleep(0)
        assert not put.done() and not wakes  # full: waiting on the event
        taker = threading.Thread(target=queue.take, args=(1,))  # the worker, elsewhere
        taker.start()
        await asyncio.wait_for(put, 10)
        taker.join()

    asyncio.run(go())
    assert wakes == [1]  # one wake-up for one refused offer
    assert queue.take(None) == ["second"]
    queue.take(None)  # nobody waits now: no wake-up
    assert wakes == [1]


def test_closing_the_feed_tears_its_event_loop_down_completely() -> None:
    def executor_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("asyncio_")}

    before = executor_threads()
    # "localhost" is resolved in the loop's default executor: a thread to shut down.
    with ScriptedServer([[tick(i) for i in range(10)]]) as server:
        source = WebSocketSource(FeedConfig(f"ws://localhost:{server.port}", max_latency_ms=1))
        part = source.build_part("feed", "feed", None)
        reader = part._reader
        assert reader is not None
        try:
            drain(part, 10)
        finally:
            part.close()
        loop = reader._loop
        assert loop is not None and loop.is_closed()
        assert not asyncio.all_tasks(loop)  # every task cancelled and awaited
        assert executor_threads() <= before  # the default executor was shut down and joined
