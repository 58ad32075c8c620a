"""Kafka end to end against a real broker: publish N ticks, consume them through the flow.

Runs when ``TICKPOOL_KAFKA_BOOTSTRAP`` names a broker (``localhost:19092`` with the compose
stack's Redpanda up); skipped otherwise. ``tests/test_kafka_flow.py`` runs the same round trip on
librdkafka's in-process mock cluster, so the path is exercised without a broker too.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from bytewax.testing import cluster_main, run_main

from tickpool.connectors.kafka_codecs import MessageRef, PayloadFormat, decode_predictions
from tickpool.connectors.synthetic import write_ticks
from tickpool.pipeline.config import PipelineConfig
from tickpool.pipeline.flow import RunObserver, build_flow
from tickpool.pipeline.kafka_flow import (
    KafkaSettings,
    PublishSettings,
    build_kafka_flow,
    build_publish_flow,
)

BOOTSTRAP = os.environ.get("TICKPOOL_KAFKA_BOOTSTRAP")
TICKS = 20_000
GARBAGE = 3


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with several partitions (a broker that auto-creates makes only one).

    A broker that cannot (librdkafka's mock cluster has no controller) auto-creates the topic
    on the first message instead.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, partitions, 1)], request_timeout=10)
    for future in futures.values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            print(f"could not create {topic} ({exc}); the broker will auto-create it")


def _produce_garbage(bootstrap: str, topic: str, count: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        producer.produce(topic, value=b"not a tick %d" % i, key=b"SYM000")
    assert producer.flush(30) == 0, "garbage messages not delivered"


def _consume_all(bootstrap: str, topic: str) -> list[bytes]:
    """Every message value of ``topic``, partition by partition, to the end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"tickpool-test-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    values: list[bytes] = []
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        for partition in sorted(partitions):
            consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            while True:
                msg = consumer.poll(30)
                assert msg is not None, f"no end-of-partition from {topic}/{partition}"
                err = msg.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, str(err)
                    break
                value = msg.value()
                assert value is not None
                values.append(value)
    finally:
        consumer.close()
    return values


def read_predictions(directory: Path) -> pa.Table:
    """All ``predictions-*.arrows`` of a run, each symbol's rows in the order written."""
    tables = []
    for path in sorted(directory.glob("predictions-*.arrows")):
        with pa.memory_map(str(path)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return by_symbol(pa.concat_tables(tables))


def by_symbol(table: pa.Table) -> pa.Table:
    """Rows grouped by symbol (stable: each symbol's own order kept)."""
    return table.take(pa.compute.sort_indices(table, [("symbol", "ascending")]))


def assert_same_predictions(got: pa.Table, want: pa.Table) -> None:
    assert got.num_rows == want.num_rows > 0
    assert got.column("symbol").to_pylist() == want.column("symbol").to_pylist()
    assert got.column("ts").equals(want.column("ts"))
    # the same ticks, cut into other batches: equal to float64 rounding (DESIGN.md)
    np.testing.assert_allclose(
        got.column("yhat").to_numpy(), want.column("yhat").to_numpy(), rtol=1e-9, atol=1e-12
    )


def kafka_round_trip(
    bootstrap: str, tmp_path: Path, fmt: PayloadFormat, *, partitions: int | None = 3
) -> None:
    """Publish TICKS ticks and some garbage, consume them with two workers, check everything.

    ``partitions``: create the topic with that many partitions first (None: let the broker
    auto-create it on the first message).
    """
    topic = f"tickpool-test-{uuid.uuid4().hex[:12]}"
    predictions_topic = f"{topic}-predictions"
    if partitions is not None:
        _create_topic(bootstrap, topic, partitions)
    ticks = tmp_path / "ticks.arrow"
    write_ticks(ticks, TICKS, 5, seed=11, batch_rows=4_096)

    publish = PublishSettings(
        file=str(ticks), bootstrap=bootstrap, topic=topic, format=fmt, batch_rows=700
    )
    run_main(build_publish_flow(publish))
    _produce_garbage(bootstrap, topic, GARBAGE)

    job = {"window": 16, "shards": 2, "stats_interval": 600.0}
    config = PipelineConfig(
        out=str(tmp_path / "kafka"), dead_letters=str(tmp_path / "dead.jsonl"), **job
    )
    kafka = KafkaSettings(
        bootstrap=bootstrap,
        topic=topic,
        predictions_topic=predictions_topic,
        predictions_format=fmt,
        tail=False,
        batch_size=2_000,
    )
    observer = RunObserver()
    cluster_main(build_kafka_flow(config, kafka, observer=observer), [], 0, worker_count_per_proc=2)

    # N ticks in, N accounted for: every tick reached the job (processed or dead-lettered there),
    # and each garbage message is a dead letter of its own that names where it was.
    records: list[dict[str, Any]] = list(observer.latest.values())
    assert sum(r["ticks"] for r in records) == TICKS
    assert sum(r["dead_letters"] for r in records) == 0
    assert observer.rows_read == TICKS
    assert {r["kafka_undecodable"] for r in records} == {GARBAGE}  # per process, in each record
    messages = {r["kafka_messages"] for r in records}
    assert len(messages) == 1 and messages.pop() > GARBAGE
    lines = (tmp_path / "dead.jsonl").read_bytes().splitlines()
    letters = [orjson.loads(line) for line in lines]
    assert len(letters) == GARBAGE
    for letter in letters:
        assert letter["source"].startswith(f"kafka:{topic}/")
        assert f"Kafka topic '{topic}', partition " in letter["reason"]
        assert letter["value"].startswith("not a tick")

    # the same predictions as replaying the file, in the files and on the predictions topic
    replay = PipelineConfig(sources=(str(ticks),), out=str(tmp_path / "replay"), **job)
    run_main(build_flow(replay))
    want = read_predictions(tmp_path / "replay")
    assert_same_predictions(read_predictions(tmp_path / "kafka"), want)
    ref = MessageRef(predictions_topic, 0, 0)
    batches = [decode_predictions(v, fmt, ref) for v in _consume_all(bootstrap, predictions_topic)]
    on_topic = by_symbol(pa.Table.from_batches(batches).cast(want.schema))
    assert_same_predictions(on_topic, want)


@pytest.mark.skipif(
    not BOOTSTRAP, reason="TICKPOOL_KAFKA_BOOTSTRAP is not set (HOST:PORT of a Kafka broker)"
)
@pytest.mark.parametrize("fmt", ["arrow", "json"])
def test_ticks_published_to_kafka_come_out_as_a_file_replay_does(
    fmt: PayloadFormat, tmp_path: Path
) -> None:
    assert BOOTSTRAP is not None
    kafka_round_trip(BOOTSTRAP, tmp_path, fmt)
