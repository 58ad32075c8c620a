"""The docker-compose stack's dashboard and scrape config agree with what tickpool exports.

No YAML parser is a dependency, so the compose and Prometheus files are read as text for the two
numbers that must agree; the Grafana dashboard is JSON. (``docker-compose config -q`` in
``.ci/run`` validates the compose file itself.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from tickpool.connectors.metrics import PrometheusStatsSink

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "docs" / "compose" / "prometheus.yml"
DASHBOARD = ROOT / "docs" / "compose" / "grafana" / "dashboards" / "tickpool.json"
DATASOURCES = ROOT / "docs" / "compose" / "grafana" / "provisioning" / "datasources"

_METRIC = re.compile(r"\b(tickpool_[a-z0-9_]+)\b")


def exported_metrics() -> set[str]:
    """The metric names tickpool's Prometheus sink serves after one full stats record."""
    registry = CollectorRegistry()
    sink = PrometheusStatsSink(0, registry=registry)
    part = sink.build("metrics", 0, 1)
    record = {
        "worker": "0",
        **dict.fromkeys(
            ["hit_rate", "interval_hit_rate", "limit", "leased", "free", "bytes_held"], 1.0
        ),
        **dict.fromkeys(["ticks_per_s", "predictions_per_s"], 1.0),
        **dict.fromkeys(
            ["hits", "misses", "grows", "shrinks", "evictions", "unpooled", "ticks"], 1
        ),
        **dict.fromkeys(["predictions", "dead_letters"], 1),
        **dict.fromkeys(["latency_ms_p50", "latency_ms_p90", "latency_ms_p99"], 1.0),
        **dict.fromkeys(["kafka_messages", "kafka_undecodable", "feed_rejected"], 1),
    }
    part.write_batch([("0", record)])
    text = generate_latest(registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def dashboard_queries() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> list[str]:
        out = []
        for panel in panels:
            out += [t["expr"] for t in panel.get("targets", [])]
            out += walk(panel.get("panels", []))
        return out

    return walk(json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"])


def test_every_metric_the_dashboard_queries_is_one_tickpool_exports() -> None:
    exported = exported_metrics()
    queries = dashboard_queries()
    used = {name for expr in queries for name in _METRIC.findall(expr)}
    assert used, "the dashboard queries no tickpool metric"
    assert used <= exported, (
        f"not exported: {sorted(used - exported)}; exported: {sorted(exported)}"
    )
    # the four panels the stack promises
    for metric in (
        "tickpool_pool_hit_rate",
        "tickpool_pool_limit",
        "tickpool_pool_leased",
        "tickpool_ticks_per_second",
        "tickpool_batch_latency_seconds",
    ):
        assert metric in used


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    uids = set(re.findall(r"^\s*uid:\s*(\S+)", _read_all(DATASOURCES), re.MULTILINE))
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {
        target["datasource"]["uid"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    assert used and used <= uids


def _read_all(folder: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.yml")))


def test_prometheus_scrapes_the_port_the_tickpool_service_serves_metrics_on() -> None:
    compose = COMPOSE.read_text(encoding="utf-8")
    service = re.search(r"^  tickpool:\n((?:    .*\n|\s*\n)+)", compose, re.MULTILINE)
    assert service is not None, "no tickpool service in docker-compose.yml"
    port = re.search(r"--metrics-port[\s=\"'-]*(\d+)", service.group(1))
    assert port is not None, "the tickpool service has no --metrics-port"
    assert re.search(r"--metrics-addr[\s=\"'-]*0\.0\.0\.0", service.group(1)), (
        "metrics must bind 0.0.0.0 to be reachable from the Prometheus container"
    )
    targets = re.findall(r"[\"']?(\w[\w.-]*):(\d+)[\"']?", _targets(PROMETHEUS.read_text()))
    assert ("tickpool", port.group(1)) in targets


def _targets(prometheus_yml: str) -> str:
    found = re.findall(r"targets:\s*\[([^\]]*)\]", prometheus_yml)
    assert found, "no static targets in prometheus.yml"
    return " ".join(found)


def test_the_tickpool_service_resumes_from_its_offsets_after_a_restart() -> None:
    compose = COMPOSE.read_text(encoding="utf-8")
    service = re.search(r"^  tickpool:\n((?:    .*\n|\s*\n)+)", compose, re.MULTILINE)
    assert service is not None, "no tickpool service in docker-compose.yml"
    # on the data volume, so it outlives the container
    assert re.search(r"- --recovery-dir\n\s+- /data/recovery\n", service.group(1))


def test_the_topics_forget_old_messages_while_the_simulator_publishes_forever() -> None:
    compose = COMPOSE.read_text(encoding="utf-8")
    service = re.search(r"^  topics:\n((?:    .*\n|\s*\n)+)", compose, re.MULTILINE)
    assert service is not None, "no topics service in docker-compose.yml"
    created = re.search(r"rpk topic create .*-c retention\.ms=(\d+)", service.group(1))
    altered = re.search(r"rpk topic alter-config .*--set retention\.ms=(\d+)", service.group(1))
    assert created is not None and altered is not None  # new topics, and ones already there
    assert created.group(1) == altered.group(1) == str(3_600_000)
