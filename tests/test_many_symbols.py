"""Batches of many symbols take array operations instead of a Python step per symbol; the results
must be those of the per-symbol slices, value for value.

`SLICE_RUNS_MAX` decides which way a batch goes; the tests set it to 0 (everything by array
operations) and to a large value (everything by slices) and compare.
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickpool.connectors.synthetic import generate_batches
from tickpool.operators import fused, symbol_column
from tickpool.operators.engine import EngineConfig, WindowPredictor
from tickpool.operators.fused import StartRuns
from tickpool.operators.items import TickBatch
from tickpool.operators.layout import block_layout, fill_series
from tickpool.operators.models import LastValue, LinearModel, Model, WindowMean
from tickpool.operators.symbol_column import SymbolNames
from tickpool.pipeline.pool import BufferPool

BY_SLICES, BY_ARRAYS = 10**9, 0


def set_way(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(fused, "SLICE_RUNS_MAX", limit)
    monkeypatch.setattr(symbol_column, "SLICE_RUNS_MAX", limit)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(window, tails, tail_len, n_new, values) for a batch of 1-12 symbols, some still young."""
    window = draw(st.integers(1, 20))
    n_sym = draw(st.integers(1, 12))
    seen = np.array(draw(st.lists(st.integers(0, 30), min_size=n_sym, max_size=n_sym)))
    n_new = np.array(draw(st.lists(st.integers(1, 40), min_size=n_sym, max_size=n_sym)))
    tail_len = np.minimum(seen, window - 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tails = rng.normal(100, 1, (n_sym, window - 1))
    values = rng.normal(100, 1, int(n_new.sum()))
    return window, tails, tail_len, n_new, values


@settings(max_examples=200, deadline=None)
@given(case=layouts(), extra=st.integers(0, 40))
def test_fill_series_by_arrays_writes_what_slices_write(
    case: tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray], extra: int
) -> None:
    window, tails, tail_len, n_new, values = case
    block = max(window, 4) + extra % 5  # any block >= W, as the kernels choose
    bases, nb = block_layout(tail_len + n_new, block)
    got = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, limit in (("slices", BY_SLICES), ("arrays", BY_ARRAYS)):
            set_way(mp, limit)
            series = np.full((nb + 1) * block, np.nan)
            fill_series(series, block, bases, tails, tail_len, values, n_new)
            got[name] = series
    assert np.array_equal(got["slices"], got["arrays"])
    # And what both write is the layout: tail then values from each base, the symbol's last
    # value up to the next base, nothing left unwritten.
    series, row = got["arrays"], 0
    ends = [*bases[1:].tolist(), series.shape[0]]
    for i, (base, t, n) in enumerate(zip(bases.tolist(), tail_len, n_new, strict=True)):
        new = values[row : row + n]
        assert np.array_equal(series[base : base + t], tails[i, :t])
        assert np.array_equal(series[base + t : base + t + n], new)
        assert (series[base + t + n : ends[i]] == new[-1]).all()
        row += n


@settings(max_examples=100, deadline=None)
@given(
    counts=st.lists(st.integers(0, 9), min_size=0, max_size=50),
    stride=st.integers(1, 4),
    shift=st.integers(0, 3),
)
def test_start_runs_take_by_gather_equals_by_slices(
    counts: list[int], stride: int, shift: int
) -> None:
    gaps = np.array([c * stride + 2 for c in counts], dtype=np.intp)
    firsts = np.cumsum(gaps) - gaps
    runs = StartRuns(firsts, counts, stride)
    flat = np.arange(int(gaps.sum()) + 10, dtype=np.float64)
    got = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, limit in (("slices", BY_SLICES), ("arrays", BY_ARRAYS)):
            set_way(mp, limit)
            out = np.full(runs.total, np.nan)
            runs.take(flat, out, shift)
            got[name] = out
    expected = [
        f + shift + stride * i for f, c in zip(firsts, counts, strict=True) for i in range(c)
    ]
    assert got["slices"].tolist() == expected
    assert got["arrays"].tolist() == expected


def test_start_runs_refuse_mismatched_or_negative_counts() -> None:
    with pytest.raises(ValueError, match="expected two 1-d arrays of one length"):
        StartRuns((0, 4), (1,), 1)
    with pytest.raises(ValueError, match="counts >= 0"):
        StartRuns((0,), (-1,), 1)
    with pytest.raises(ValueError, match="stride >= 1"):
        StartRuns((0,), (1,), 0)


NAME_SETS = {
    "one size": ["AAPL", "MSFT", "NVDA", "AMZN"],
    "mixed sizes": ["A", "BRK.B", "", "éé", "BTC/USDT"],
}


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(sorted(NAME_SETS)),
    picks=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 6)), min_size=1, max_size=60),
)
def test_symbol_column_by_every_way_equals_the_names_repeated(
    kind: str, picks: list[tuple[int, int]]
) -> None:
    table = NAME_SETS[kind]
    ids = np.array([k % len(table) for k, _ in picks], dtype=np.intp)
    counts = np.array([c for _, c in picks], dtype=np.intp)
    expected = [
        table[k] for k, c in zip(ids.tolist(), counts.tolist(), strict=True) for _ in range(c)
    ]
    with pytest.MonkeyPatch.context() as mp:
        for limit in (BY_SLICES, BY_ARRAYS):
            set_way(mp, limit)
            names = SymbolNames()
            names.extend(table[:2])
            names.extend(table[2:-1])  # names arrive as symbols do
            names.column(ids % (len(table) - 1), counts, int(counts.sum()))  # before the last
            names.extend(table[-1:])
            column = names.column(ids, counts, int(counts.sum()))
            column.validate(full=True)
            assert column.type == pa.string()
            assert column.to_pylist() == expected


def model_for(kind: str, window: int, normalize: str) -> Model:
    if kind == "mean":
        return WindowMean(2)
    if kind == "last":
        return LastValue(2)
    weights = np.random.default_rng(4).normal(0, 0.3, (window, 2))
    return LinearModel(
        weights, 0.1, window=window, horizon=2, normalize=None if normalize == "none" else normalize
    )


@pytest.mark.parametrize(
    ("kind", "window", "stride", "normalize"),
    [
        ("linear", 16, 1, "window-zscore"),
        ("linear", 40, 3, "window-zscore"),
        ("linear", 130, 1, "window-zscore"),  # FFT rows
        ("linear", 24, 2, "none"),
        ("mean", 8, 1, "window-zscore"),
        ("last", 8, 2, "window-zscore"),
    ],
)
def test_many_symbol_batches_predict_by_arrays_exactly_as_by_slices(
    monkeypatch: pytest.MonkeyPatch, kind: str, window: int, stride: int, normalize: str
) -> None:
    """300 symbols of unequal rates in batches cut at random: every symbol is young in some
    batches and absent from others; both ways give the same predictions, bit for bit, and the
    same state (the snapshot), which a resumed run continues from."""
    batches = list(generate_batches(30_000, 300, seed=5, batch_rows=30_000))
    table = pa.Table.from_batches(batches)
    cuts = np.sort(np.random.default_rng(6).choice(30_000, 24, replace=False)).tolist()
    bounds = [0, *cuts, 30_000]
    cfg = EngineConfig(window=window, stride=stride, horizon=2, normalize=normalize)  # type: ignore[arg-type]
    results, snaps = {}, {}
    for name, limit in (("slices", BY_SLICES), ("arrays", BY_ARRAYS)):
        set_way(monkeypatch, limit)
        wp = WindowPredictor(cfg, model_for(kind, window, normalize), BufferPool())
        assert wp.fused
        out = []
        for i, (a, b) in enumerate(itertools.pairwise(bounds)):
            r = wp.process(
                TickBatch(table.slice(a, b - a).combine_chunks().to_batches()[0], "t", i)
            )
            if r.predictions is not None:
                r.predictions.validate(full=True)
                out.append(r.predictions)
        results[name] = pa.Table.from_batches(out)
        snaps[name] = pickle.dumps(wp.snapshot())
    assert results["slices"].num_rows > 5_000 // stride
    assert results["slices"].equals(results["arrays"])
    assert snaps["slices"] == snaps["arrays"]


def test_state_of_thousands_of_symbols_survives_a_snapshot() -> None:
    """The per-symbol state lives in arrays that grow with the symbol table; a snapshot of
    2,000 symbols resumes to the same predictions as an uninterrupted run."""
    cfg = EngineConfig(window=12, normalize="window-zscore")
    weights = np.random.default_rng(9).normal(0, 0.3, (12, 1))
    model = LinearModel(weights, 0.0, window=12, horizon=1, normalize="window-zscore")
    batches = list(generate_batches(40_000, 2_000, seed=8, batch_rows=10_000))
    whole = WindowPredictor(cfg, model, BufferPool())
    first = WindowPredictor(cfg, model, BufferPool())
    expected, got = [], []
    for i, b in enumerate(batches):
        r = whole.process(TickBatch(b, "t", i))
        assert r.predictions is not None
        expected.append(r.predictions)
    for i, b in enumerate(batches[:2]):
        r = first.process(TickBatch(b, "t", i))
        assert r.predictions is not None
        got.append(r.predictions)
    second = WindowPredictor(
        cfg, model, BufferPool(), resume=pickle.loads(pickle.dumps(first.snapshot()))
    )
    for i, b in enumerate(batches[2:], start=2):
        r = second.process(TickBatch(b, "t", i))
        assert r.predictions is not None
        got.append(r.predictions)
    assert len(first.snapshot()["symbols"]) == 2_000
    whole_table, resumed = pa.Table.from_batches(expected), pa.Table.from_batches(got)
    assert pc.count_distinct(whole_table.column("symbol")).as_py() > 1_000
    assert resumed.equals(whole_table)


def test_a_snapshot_whose_tail_does_not_match_its_count_is_refused() -> None:
    cfg = EngineConfig(window=5, normalize="none")
    wp = WindowPredictor(cfg, WindowMean(), BufferPool())
    batch = next(generate_batches(50, 3, seed=1))
    wp.process(TickBatch(batch, "t", 0))
    snap = wp.snapshot()
    seen, tail, moments, rng = snap["states"][1]
    snap["states"][1] = (seen, tail[:8], moments, rng)  # one value where four are due
    name = snap["symbols"][1]
    with pytest.raises(ValueError, match=rf"symbol {name!r} holds 1 tail values after {seen}"):
        WindowPredictor(cfg, WindowMean(), BufferPool(), resume=snap)
    snap["states"][1] = (seen, tail[:12], moments, rng)  # not whole float64 values
    with pytest.raises(ValueError, match=rf"symbol {name!r} holds 1.5 tail values"):
        WindowPredictor(cfg, WindowMean(), BufferPool(), resume=snap)
    snap["states"][1] = (seen, tail, moments, rng)
    zscore = EngineConfig(window=5, normalize="zscore")  # a state written without moments
    first = snap["symbols"][0]  # every state lacks them: the first symbol is named
    with pytest.raises(ValueError, match=rf"symbol {first!r} has its running moments missing"):
        WindowPredictor(zscore, WindowMean(), BufferPool(), resume={**snap, "normalize": "zscore"})
    snap["states"] = snap["states"][:2]
    with pytest.raises(ValueError, match="lists 3 symbols and 2 states"):
        WindowPredictor(cfg, WindowMean(), BufferPool(), resume=snap)


def test_each_batch_is_read_with_its_own_symbol_dictionary() -> None:
    """The ids of the last batch's dictionary are reused only while batches repeat it."""
    wp = WindowPredictor(EngineConfig(window=1, normalize="none"), LastValue(), BufferPool())
    value_of = {"A": 1.0, "B": 2.0, "C": 3.0, "D": 4.0}
    for i, (dictionary, codes) in enumerate(
        [
            (["A", "B"], [0, 1, 1]),
            (["A", "B"], [1, 0]),
            (["B", "A"], [0, 1, 1]),  # the same names in another order
            (["C", "A", "B"], [0, 2, 1]),
            (["C", "D"], [1, 0]),  # as long as the last, other names
            (["D"], [0]),
        ]
    ):
        batch = pa.record_batch(
            {
                "ts": pa.array(np.arange(len(codes)), pa.timestamp("ns", tz="UTC")),
                "symbol": pa.DictionaryArray.from_arrays(
                    pa.array(codes, pa.int32()), pa.array(dictionary)
                ),
                "price": [value_of[dictionary[c]] for c in codes],
            }
        )
        r = wp.process(TickBatch(batch, "dicts", i))
        assert r.predictions is not None
        got = zip(
            r.predictions.column("symbol").to_pylist(),
            r.predictions.column("yhat").to_pylist(),
            strict=True,
        )
        assert all(value_of[symbol] == y for symbol, y in got)
        assert sorted(r.predictions.column("symbol").to_pylist()) == sorted(
            dictionary[c] for c in codes
        )


def test_batches_encoded_one_by_one_with_mixed_names_and_bad_rows() -> None:
    """Plain string symbols (each batch gets its own dictionary, in order of appearance), names
    of mixed lengths, NaN prices: by arrays exactly as by slices, and as the general path to
    rounding; every row is a prediction or a dead letter."""
    rng = np.random.default_rng(12)
    source = pa.Table.from_batches(list(generate_batches(20_000, 120, seed=3, batch_rows=20_000)))
    dictionary = source.column("symbol").chunk(0).dictionary.to_pylist()
    renamed = {name: ("X" * (k % 7)) + f"s{k}" for k, name in enumerate(dictionary)}
    symbols = [renamed[s] for s in source.column("symbol").to_pylist()]
    prices = source.column("price").to_numpy().copy()
    prices[rng.choice(prices.shape[0], 200, replace=False)] = np.nan
    cuts = [0, *np.sort(rng.choice(20_000, 15, replace=False)).tolist(), 20_000]
    batches = [
        pa.record_batch(
            {
                "ts": source.column("ts").slice(a, b - a).combine_chunks(),
                "symbol": pa.array(symbols[a:b], pa.string()),
                "price": pa.array(prices[a:b]),
            }
        )
        for a, b in itertools.pairwise(cuts)
        if b > a
    ]
    cfg = EngineConfig(window=24, stride=1, horizon=2, normalize="window-zscore")
    model = model_for("linear", 24, "window-zscore")
    tables = {}
    for name, limit, is_fused in (
        ("slices", BY_SLICES, True),
        ("arrays", BY_ARRAYS, True),
        ("general", BY_ARRAYS, False),
    ):
        with pytest.MonkeyPatch.context() as mp:
            set_way(mp, limit)
            wp = WindowPredictor(cfg, model, BufferPool(), fused=is_fused)
            assert wp.fused is is_fused
            out, dead = [], 0
            for i, batch in enumerate(batches):
                r = wp.process(TickBatch(batch, "mixed", i))
                dead += len(r.dead_letters)
                if r.predictions is not None:
                    out.append(r.predictions)
            assert dead == 200 and wp.processed + wp.dead_rows == 20_000
            tables[name] = pa.Table.from_batches(out)
    assert tables["slices"].equals(tables["arrays"])
    general, arrays = tables["general"], tables["arrays"]
    assert general.column("symbol").equals(arrays.column("symbol"))
    assert general.column("ts").equals(arrays.column("ts"))
    for col in ("yhat_1", "yhat_2"):
        np.testing.assert_allclose(
            arrays.column(col).to_numpy(), general.column(col).to_numpy(), rtol=1e-9, atol=0
        )
