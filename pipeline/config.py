"""``PipelineConfig``: every setting of a tickpool run in one frozen, validated dataclass.

Loadable from a TOML file (``tickpool replay --config run.toml``) whose keys are the
field names; every field can be overridden from the command line.  Validation
happens once, at construction, with messages that name the field, the value found
and what was expected.

>>> cfg = PipelineConfig(sources=("ticks.arrow",), window=32, normalize="zscore")
>>> cfg.engine().window, cfg.engine().normalize
(32, 'zscore')
>>> PipelineConfig(window=0)
Traceback (most recent call last):
...
ValueError: window must be an integer >= 1; got 0
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tickpool.operators.columns import ColumnSpec
from tickpool.operators.engine import EngineConfig
from tickpool.operators.normalize import NormalizeMode, parse_mode
from tickpool.pipeline.pool import TIERS

__all__ = ["PipelineConfig", "load_config"]


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a run needs.

    Attributes:
        sources: Arrow IPC files/streams, Parquet files or glob patterns.
        ts_column, symbol_column, value: column names.
        window, stride, horizon, normalize: the window job (see EngineConfig).
        model: ``last``, ``mean`` or the path of a linear ``.npz``.
        bad_rows: ``drop`` (to dead letters) or ``error``.
        pool_tier: ``small``, ``medium``, ``large`` or ``streaming``.
        pool_max_bytes: the pool's byte budget.
        shards: shard count (fixed for a recovery directory's lifetime);
            0 means one per worker.
        workers: Bytewax workers in this process (``tickpool replay``).
        max_batch_rows: cut larger source batches into zero-copy slices.
        speed: replay pacing (0: as fast as possible; 1: market speed).
        out: directory for ``predictions-<shard>.arrows``, ``-`` for JSON lines
            on stdout, or None for no prediction output.
        stats: JSON-lines file for pool statistics (None: none).
        stats_interval: seconds between statistics records.
        dead_letters: JSON-lines file for rejected rows (None: count only).
        metrics_port: serve Prometheus metrics on this port (None: off).
        metrics_addr: address the metrics server binds (loopback by default).
        recovery_dir: Bytewax recovery directory (None: no recovery).
        snapshot_interval: seconds between recovery snapshots (epoch length).
    """

    sources: tuple[str, ...] = ()
    ts_column: str = "ts"
    symbol_column: str = "symbol"
    value: str = "price"
    window: int = 64
    stride: int = 1
    horizon: int = 1
    normalize: NormalizeMode = "window-zscore"
    model: str = "last"
    bad_rows: str = "drop"
    pool_tier: str = "streaming"
    pool_max_bytes: int = 256 * 1024 * 1024
    shards: int = 0
    workers: int = 1
    max_batch_rows: int | None = None
    speed: float = 0.0
    out: str | None = None
    stats: str | None = None
    stats_interval: float = 10.0
    dead_letters: str | None = None
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    recovery_dir: str | None = None
    snapshot_interval: float = 1.0
    columns: ColumnSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(
            self,
            "columns",
            ColumnSpec(ts=self.ts_column, symbol=self.symbol_column, value=self.value),
        )
        self.engine()  # validates window, stride, horizon, normalize, bad_rows
        parse_mode(self.normalize)
        if self.pool_tier not in TIERS:
            raise ValueError(f"pool_tier must be one of {', '.join(TIERS)}; got {self.pool_tier!r}")
        _positive_int("pool_max_bytes", self.pool_max_bytes)
        _positive_int("workers", self.workers)
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 0:
            raise ValueError(f"shards must be an integer >= 0; got {self.shards!r}")
        if self.max_batch_rows is not None:
            _positive_int("max_batch_rows", self.max_batch_rows)
        if not self.speed >= 0:
            raise ValueError(f"speed must be >= 0 (0 = as fast as possible); got {self.speed}")
        if not self.stats_interval > 0:
            raise ValueError(f"stats_interval must be > 0 seconds; got {self.stats_interval}")
        if not self.snapshot_interval > 0:
            raise ValueError(f"snapshot_interval must be > 0 seconds; got {self.snapshot_interval}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535; got {self.metrics_port}")

    @property
    def shard_count(self) -> int:
        """Shards actually used: ``shards``, or one per worker when 0."""
        return self.shards or self.workers

    def engine(self) -> EngineConfig:
        """The window operator's part of the configuration."""
        return EngineConfig(
            window=self.window,
            stride=self.stride,
            horizon=self.horizon,
            normalize=self.normalize,
            columns=ColumnSpec(ts=self.ts_column, symbol=self.symbol_column, value=self.value),
            bad_rows=self.bad_rows,  # type: ignore[arg-type]
        )

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with ``changes`` applied (and validated); None values are ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = set(changes) - {f.name for f in fields(self) if f.init}
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path) -> PipelineConfig:
    """Read a TOML file whose top-level keys are :class:`PipelineConfig` fields."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {p} is not valid TOML: {err}") from None
    known = {f.name: f for f in fields(PipelineConfig) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"config file {p}: unknown key(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(known)}"
        )
    if "sources" in data and isinstance(data["sources"], str):
        data["sources"] = [data["sources"]]
    try:
        return PipelineConfig(**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config file {p}: {err}") from None


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
