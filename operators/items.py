"""Data contracts of the items that flow between sources, operators and sinks.

Sources emit :class:`TickBatch` (one Arrow record batch of ticks and where it came
from); the window operator emits prediction ``RecordBatch``es with
:data:`PREDICTION_TS`/``symbol``/``yhat*`` columns, :class:`DeadLetter`
records for rejected rows, and pool-statistics dicts.  Everything here pickles,
because Bytewax moves items between workers and snapshots state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

__all__ = [
    "PREDICTION_TS",
    "DeadLetter",
    "TickBatch",
    "prediction_columns",
    "prediction_schema",
]

PREDICTION_TS = "ts"


@dataclass(frozen=True, slots=True)
class TickBatch:
    """One Arrow record batch of ticks, with its position in its source.

    Attributes:
        batch: the ticks (``ts``, ``symbol``, value columns, anything else).
        source: the file path or feed name it came from.
        index: the batch's index within ``source`` (with ``row_offset``, the
            position a dead letter points back to).
        row_offset: row of ``source``'s batch ``index`` where ``batch`` starts
            (non-zero when a source cuts large batches into smaller ones).
    """

    batch: pa.RecordBatch
    source: str
    index: int
    row_offset: int = 0

    @property
    def where(self) -> str:
        """Human-readable position for error messages: ``file x.arrow, batch 3``."""
        return f"{self.source}, batch {self.index}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected input row (or whole batch, ``row is None``) and why."""

    source: str
    batch: int
    row: int | None
    reason: str
    ts: int | None = None
    symbol: str | None = None
    value: float | str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN/inf values become strings: JSON has no NaN)."""
        value = self.value
        if (isinstance(value, float) and value != value) or value in (float("inf"), float("-inf")):
            value = repr(value)
        return {
            "source": self.source,
            "batch": self.batch,
            "row": self.row,
            "reason": self.reason,
            "ts": self.ts,
            "symbol": self.symbol,
            "value": value,
        }


def prediction_columns(horizon: int) -> list[str]:
    """``["yhat"]`` for horizon 1, else ``["yhat_1", ..., "yhat_h"]``."""
    if horizon == 1:
        return ["yhat"]
    return [f"yhat_{h}" for h in range(1, horizon + 1)]


def prediction_schema(horizon: int) -> pa.Schema:
    """Schema of prediction batches: ``ts`` (the window's last tick), ``symbol``, ``yhat*``."""
    fields: list[pa.Field[Any]] = [
        pa.field(PREDICTION_TS, pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
    ]
    fields.extend(pa.field(c, pa.float64(), nullable=False) for c in prediction_columns(horizon))
    return pa.schema(fields)
