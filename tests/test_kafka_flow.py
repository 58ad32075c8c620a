"""The Kafka source, flow and commands without a broker, and end to end on a mock cluster.

librdkafka (inside confluent-kafka) can start a mock Kafka cluster in-process
(``test.mock.num.brokers``) that other clients reach over TCP; the end-to-end tests here publish
and consume through it with the real Bytewax connector.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from bytewax.connectors.kafka import KafkaSourceMessage

from tests.test_kafka_integration import kafka_round_trip
from tickpool.connectors.kafka import (
    KafkaCounters,
    KafkaErrors,
    KafkaTickSource,
    _TickPartition,
    prediction_messages,
)
from tickpool.connectors.kafka_codecs import TickDecoder, decode_predictions, encode_arrow
from tickpool.operators.items import DeadLetter, TickBatch
from tickpool.pipeline.config import PipelineConfig
from tickpool.pipeline.kafka_cli import register
from tickpool.pipeline.kafka_flow import (
    KafkaSettings,
    PublishSettings,
    build_kafka_flow,
    build_publish_flow,
)


class _FakeKafkaPartition:
    """Stands in for Bytewax's Kafka partition: hands out polls, then ends."""

    def __init__(self, polls: list[list[Any]]) -> None:
        self._polls = iter(polls)
        self.offset = 0
        self.closed = False

    def next_batch(self) -> list[Any]:
        poll = next(self._polls)  # StopIteration at the end, as with tail=False
        if poll:  # as Bytewax does: past the last item, error events (invalid offsets) too
            last = poll[-1]
            self.offset = (last.msg if hasattr(last, "err") else last).offset + 1
        return poll

    def next_awake(self) -> None:
        return None

    def snapshot(self) -> int:
        return self.offset

    def close(self) -> None:
        self.closed = True


def _msg(offset: int, value: bytes | None) -> Any:
    return KafkaSourceMessage(key=b"A", value=value, topic="ticks", partition=2, offset=offset)


def _tick(ts: int) -> bytes:
    return orjson.dumps({"ts": ts, "symbol": "A", "price": float(ts)})


def test_a_partition_turns_each_poll_into_batches_and_keeps_bytewaxs_offset() -> None:
    arrow = encode_arrow(pa.record_batch({"ts": [9], "symbol": ["A"], "price": [9.0]}))
    inner = _FakeKafkaPartition(
        [[_msg(0, _tick(0)), _msg(1, _tick(1)), _msg(2, b"junk")], [], [_msg(3, arrow)]]
    )
    counters = KafkaCounters()
    part = _TickPartition(inner, TickDecoder(), counters)

    first = part.next_batch()
    (batch,) = [i for i in first if isinstance(i, TickBatch)]
    (letter,) = [i for i in first if isinstance(i, DeadLetter)]
    assert letter.batch == 2 and "offset 2" in letter.reason
    assert (batch.source, batch.index, batch.batch.num_rows) == ("kafka:ticks/2", 0, 2)
    assert part.snapshot() == 3
    assert part.next_batch() == []
    (arrow_item,) = part.next_batch()
    assert isinstance(arrow_item, TickBatch) and arrow_item.index == 3
    assert part.snapshot() == 4
    with pytest.raises(StopIteration):
        part.next_batch()
    assert counters.snapshot() == {
        "kafka_messages": 4,
        "kafka_undecodable": 1,
        "kafka_copied_rows": 0,  # no poll held two Arrow messages
    }
    part.close()
    assert inner.closed


def test_a_stop_request_ends_each_partition_at_its_next_poll() -> None:
    import threading

    inner = _FakeKafkaPartition([[_msg(0, _tick(0)), _msg(1, _tick(1))], [_msg(2, _tick(2))]])
    stop = threading.Event()
    part = _TickPartition(inner, TickDecoder(), KafkaCounters(), stop)
    (batch,) = part.next_batch()
    assert isinstance(batch, TickBatch) and batch.batch.num_rows == 2
    stop.set()
    with pytest.raises(StopIteration):
        part.next_batch()
    assert part.snapshot() == 2  # resumes right after what was handed out
    part.close()
    assert inner.closed


def _error(code: int, *, fatal: bool = False, retriable: bool = False) -> Any:
    from bytewax.connectors.kafka import KafkaError as ErrorItem
    from confluent_kafka import KafkaError

    err = KafkaError(code, "broker b:1 went away", fatal=fatal, retriable=retriable)
    return ErrorItem(err, _msg(-1001, None))  # error events carry no valid offset


def test_transient_kafka_errors_are_logged_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from confluent_kafka import KafkaError

    inner = _FakeKafkaPartition(
        [
            [_msg(0, _tick(0)), _error(KafkaError._TRANSPORT)],
            [_error(KafkaError._ALL_BROKERS_DOWN, retriable=True)],
            [_msg(1, _tick(1))],
        ]
    )
    errors = KafkaErrors(["b:1"], ["ticks"])
    part = _TickPartition(inner, TickDecoder(), KafkaCounters(), errors=errors)
    with caplog.at_level("WARNING", logger="tickpool.connectors.kafka"):
        (first,) = part.next_batch()
        assert part.next_batch() == []
        assert inner.snapshot() == -1000  # Bytewax's offset moved past an error event
        assert part.snapshot() == 1  # ours moves past messages only
        errors.callback(KafkaError(KafkaError._TRANSPORT, "b:1/bootstrap: Disconnected"))
        (second,) = part.next_batch()
    assert isinstance(first, TickBatch) and isinstance(second, TickBatch)
    assert part.snapshot() == 2
    assert errors.transient == 3
    assert "_ALL_BROKERS_DOWN" in caplog.text and "Kafka brokers b:1, topic ticks" in caplog.text


def test_a_fatal_kafka_error_ends_the_run_with_one_line_naming_broker_and_topic() -> None:
    from confluent_kafka import KafkaError

    inner = _FakeKafkaPartition([[_msg(0, _tick(0)), _error(KafkaError._FATAL, fatal=True)]])
    part = _TickPartition(inner, TickDecoder(), errors=KafkaErrors(["b:1"], ["ticks"]))
    with pytest.raises(RuntimeError, match=r"Kafka brokers b:1, topic ticks.*_FATAL") as info:
        part.next_batch()
    assert "\n" not in str(info.value)

    # a fatal error reported through the consumers' error_cb ends every partition
    source = KafkaTickSource(["b:1"], ["ticks"])
    assert source._inner._add_config["error_cb"] == source.errors.callback
    part = _TickPartition(_FakeKafkaPartition([[]]), TickDecoder(), errors=source.errors)
    source.errors.callback(KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    with pytest.raises(RuntimeError, match="fatal error from Kafka brokers b:1, topic ticks"):
        part.next_batch()


def test_compose_forwards_sigterm_to_the_python_services() -> None:
    text = (Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text()
    anchor = text.split("x-python: &python", 1)[1].split("\nservices:", 1)[0]
    assert "init: true" in anchor


def test_without_confluent_kafka_the_package_imports_and_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['confluent_kafka'] = None\n"
        "import tickpool.pipeline.kafka_flow, tickpool.pipeline.kafka_cli\n"
        "from tickpool.connectors.kafka import KafkaTickSource, KafkaUnavailable\n"
        "try:\n"
        "    KafkaTickSource(['localhost:9092'], ['ticks'])\n"
        "except KafkaUnavailable as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "pip install 'tickpool[kafka]'" in done.stdout
    assert "confluent-kafka" in done.stdout


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bootstrap": ""}, "bootstrap must name at least one HOST:PORT"),
        ({"bootstrap": "localhost"}, "'localhost' is not HOST:PORT"),
        ({"bootstrap": "localhost:99999"}, "'localhost:99999' is not HOST:PORT"),
        ({"topic": "no spaces"}, "topic must be a Kafka topic name"),
        ({"predictions_topic": "ticks"}, "must differ from the tick topic"),
        ({"payload": "xml"}, "payload must be auto, arrow or json"),
        ({"predictions_format": "csv"}, "predictions_format must be arrow or json"),
        ({"start_at": "middle"}, "start_at must be beginning or end"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"options": ("linger.ms",)}, "'linger.ms' is not KEY=VALUE"),
    ],
)
def test_kafka_settings_say_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"bootstrap": "localhost:19092", "topic": "ticks", **changes}
    with pytest.raises(ValueError, match=message):
        KafkaSettings(**settings)


def test_kafka_settings_read_broker_lists_and_options() -> None:
    s = KafkaSettings(bootstrap="a:1, b:2", topic="ticks", options=("linger.ms=5", "acks=all"))
    assert s.bootstrap == ("a:1", "b:2")
    assert s.add_config() == {"linger.ms": "5", "acks": "all"}
    with pytest.raises(ValueError, match="speed must be 0"):
        PublishSettings(file="x.arrow", bootstrap="a:1", topic="t", speed=-1)
    with pytest.raises(ValueError, match="format must be arrow or json"):
        PublishSettings(file="x.arrow", bootstrap="a:1", topic="t", format="avro")  # type: ignore[arg-type]


def _steps(flow: Any) -> dict[str, Any]:
    return {step.step_id.split(".", 1)[1]: step for step in flow.substeps}


def test_the_kafka_flow_shares_the_replay_job_and_can_send_predictions_to_kafka() -> None:
    config = PipelineConfig(out="out", dead_letters="dead.jsonl", shards=2)
    plain = _steps(build_kafka_flow(config, KafkaSettings(bootstrap="b:1", topic="t")))
    assert {"kafka_ticks", "decoded", "shard", "window", "predictions", "dead_letters"} <= set(
        plain
    )
    # undecodable messages join the job's dead letters
    merged = plain["dl_with_source"]
    assert plain["decoded"].falses.stream_id in merged.ups.stream_ids.values()
    assert "predictions_kafka" not in plain

    kafka = KafkaSettings(bootstrap="b:1", topic="t", predictions_topic="p")
    steps = _steps(build_kafka_flow(config, kafka))
    unkey = steps["predictions_unkey"]
    assert unkey.up.stream_id == steps["window_predictions"].down.stream_id
    assert "predictions_kafka" in steps


def test_prediction_messages_are_keyed_by_symbol() -> None:
    batch = pa.record_batch(
        {
            "ts": pa.array([1, 2, 3], pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
            "symbol": ["B", "A", "B"],
            "yhat": [1.0, 2.0, 3.0],
        }
    )
    messages = prediction_messages(batch, "json")
    assert [m.key for m in messages] == [b"B", b"A"]
    got = decode_predictions(messages[0].value, "json", None)  # type: ignore[arg-type]
    assert got.column("yhat").to_pylist() == [1.0, 3.0]


def test_kafka_feed_and_publish_register_on_the_tickpool_parser() -> None:
    parser = argparse.ArgumentParser(prog="tickpool")
    handlers = register(parser.add_subparsers(dest="command"))
    assert set(handlers) == {"kafka-feed", "publish"}
    args = parser.parse_args(
        [
            "kafka-feed",
            "--bootstrap",
            "redpanda:9092",
            "--topic",
            "ticks",
            "--workers",
            "2",
            "--metrics-port",
            "9100",
            "--metrics-addr",
            "0.0.0.0",
            "--window",
            "32",
        ]
    )
    assert (args.command, args.workers, args.metrics_port, args.window) == (
        "kafka-feed",
        2,
        9100,
        32,
    )
    args = parser.parse_args(
        [
            "publish",
            "t.arrow",
            "--bootstrap",
            "h:1",
            "--topic",
            "t",
            "--speed",
            "5",
            "--format",
            "json",
        ]
    )
    assert (args.file, args.speed, args.format) == ("t.arrow", 5.0, "json")


def test_kafka_source_checks_its_arguments_before_any_worker_starts() -> None:
    with pytest.raises(ValueError, match="start_at must be"):
        KafkaTickSource(["b:1"], ["t"], start_at="now")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="payload must be"):
        KafkaTickSource(["b:1"], ["t"], payload="xml")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not one string"):
        KafkaTickSource("b:1", ["t"])


# -- end to end on librdkafka's mock cluster --------------------------------------------------


@pytest.fixture(scope="module")
def mock_bootstrap() -> Iterator[str]:
    """``host:port`` of a one-broker mock cluster living in this process (auto-creates topics)."""
    from confluent_kafka import Producer

    owner = Producer({"test.mock.num.brokers": 1, "log_level": 0})
    broker = next(iter(owner.list_topics(timeout=30).brokers.values()))
    yield f"{broker.host}:{broker.port}"
    owner.flush(5)


def _published_topic(
    bootstrap: str,
    tmp_path: Path,
    name: str,
    ticks: int,
    symbols: int,
    *,
    seed: int,
    file_rows: int = 65_536,
    rows: int | None = None,
) -> str:
    """A new topic holding ``ticks`` generated ticks, published by tickpool's publisher
    (``rows`` per piece, its default if None) from a file of ``file_rows``-row batches."""
    import dataclasses
    import uuid

    from bytewax.testing import run_main

    from tickpool.connectors.synthetic import write_ticks

    topic = f"tickpool-{name}-{uuid.uuid4().hex[:12]}"
    path = tmp_path / f"{name}.arrow"
    write_ticks(path, ticks, symbols, seed=seed, batch_rows=file_rows)
    settings = PublishSettings(str(path), bootstrap, topic)
    if rows is not None:
        settings = dataclasses.replace(settings, batch_rows=rows)
    run_main(build_publish_flow(settings))
    return topic


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["arrow", "json"])
def test_ticks_through_a_mock_kafka_cluster_match_a_file_replay(
    fmt: Any, mock_bootstrap: str, tmp_path: Path
) -> None:
    kafka_round_trip(mock_bootstrap, tmp_path, fmt, partitions=None)


@pytest.mark.slow
def test_kafka_feed_stops_cleanly_on_sigint_with_final_stats_and_closed_outputs(
    mock_bootstrap: str, tmp_path: Path
) -> None:
    import os
    import signal
    import time

    topic = _published_topic(mock_bootstrap, tmp_path, "stop", 5_000, 3, seed=3, file_rows=1_000)
    out, stats = tmp_path / "out", tmp_path / "stats.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tickpool.pipeline.kafka_cli",
            "kafka-feed",
            "--bootstrap",
            mock_bootstrap,
            "--topic",
            topic,
            "--window",
            "8",
            "--out",
            str(out),
            "--stats",
            str(stats),
            "--stats-interval",
            "600",
            "--quiet",
        ],
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        predictions = out / "predictions-0.arrows"
        while not (predictions.exists() and predictions.stat().st_size > 0):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "kafka-feed made no predictions in time"
            time.sleep(0.05)
        time.sleep(2.0)  # caught up with the (small) topic: now tailing it
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGINT: finishing the batches in flight" in err
    record = orjson.loads(stats.read_bytes().splitlines()[-1])  # written at EOF: a clean stop
    assert record["ticks"] == 5_000 and record["leased"] == 0
    data = predictions.read_bytes()
    assert data.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")  # the stream was closed
    assert pa.ipc.open_stream(data).read_all().num_rows == record["predictions"]


@pytest.mark.slow
def test_a_poll_of_small_arrow_messages_becomes_one_item_not_one_per_message(
    mock_bootstrap: str, tmp_path: Path
) -> None:
    # 1,024-row pieces split per symbol (the old publisher default): ~128-tick messages
    topic = _published_topic(mock_bootstrap, tmp_path, "merge", 8_192, 8, seed=5, rows=1_024)

    def polls(merge_rows: int) -> tuple[list[list[TickBatch]], dict[str, int]]:
        source = KafkaTickSource([mock_bootstrap], [topic], tail=False, merge_rows=merge_rows)
        out: list[list[TickBatch]] = []
        for name in source.list_parts():
            part = source.build_part("kafka", name, None)
            try:
                while True:
                    items = part.next_batch()
                    if items:
                        assert all(isinstance(i, TickBatch) for i in items)
                        out.append(items)  # type: ignore[arg-type]
            except StopIteration:
                pass
            finally:
                part.close()
        return out, source.stats()

    before, before_stats = polls(merge_rows=1)  # one item per message, as before merging
    after, after_stats = polls(merge_rows=65_536)
    messages = after_stats["kafka_messages"]
    assert before_stats["kafka_messages"] == messages >= 64  # 8 pieces x 8 symbols at least
    per_poll_before = sum(map(len, before)) / len(before)
    per_poll_after = sum(map(len, after)) / len(after)
    rows_per_item = 8_192 / sum(map(len, after))
    print(
        f"items per poll: {per_poll_before:.1f} before, {per_poll_after:.1f} after; "
        f"{messages} messages, {rows_per_item:,.0f} ticks per item after"
    )
    assert sum(map(len, before)) == messages  # ~128 ticks an item
    assert all(len(items) == 1 for items in after)  # the whole poll in one item
    assert sum(i.batch.num_rows for items in after for i in items) == 8_192
    assert before_stats["kafka_copied_rows"] == 0
    assert after_stats["kafka_copied_rows"] <= 8_192
