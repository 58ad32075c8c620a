"""Prediction models: map windows (m, W) to H-step forecasts (m, H) in the caller's buffer.

A model never sees ticks, symbols or prices: the engine hands it an (m, W) float64 array of
windows (oldest tick first), possibly already normalized, and an (m, H) output buffer leased from
the pool; the engine maps outputs back to price units itself (``y = z * scale + loc``). Models
follow numpy's ``out=`` convention and allocate nothing proportional to m per call, except where a
class says otherwise.

The built-in models are the naive baselines (`LastValue`, `WindowMean`), a fitted `LinearModel`
stored as ``.npz`` (`ridge_fit` fits one), and an `Ensemble` weighted mean; `resolve_model` turns
a command-line spec into one of them. Anything else (ONNX, PyTorch) plugs in through the `Model`
protocol.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "LINEAR_FORMAT",
    "BufferSource",
    "Ensemble",
    "LastValue",
    "LinearModel",
    "Model",
    "ModelFileError",
    "ModelMismatchError",
    "WindowMean",
    "check_compatible",
    "resolve_model",
    "ridge_fit",
]

FloatArray = npt.NDArray[np.float64]

LINEAR_FORMAT: Final = "tickpool.linear/1"
"""The ``format`` entry of a linear model file written by `LinearModel.save`."""

_LINEAR_KEYS: Final = ("format", "weights", "intercept", "window", "horizon", "normalize")
_BUILTIN_SPECS: Final = ("last", "mean")


class ModelFileError(ValueError):
    """A model file is unreadable or malformed: names the file, the key, what it found and expected.

    >>> str(ModelFileError("m.npz", "window", "-3", "an integer >= 1"))
    "m.npz: key 'window': found -3, expected an integer >= 1"
    """

    def __init__(self, path: str | os.PathLike[str], key: str | None, found: str, expected: str):
        self.path = os.fspath(path)
        self.key = key
        self.found = found
        self.expected = expected
        where = f"{self.path}: key {key!r}" if key is not None else self.path
        super().__init__(f"{where}: found {found}, expected {expected}")


class ModelMismatchError(ValueError):
    """A model was fitted for another window, horizon or normalization than this run uses."""


@runtime_checkable
class Model(Protocol):
    """What the engine needs of a model: its input contract and ``predict(windows, out)``.

    - ``window``: the W it was built for (None: any W).
    - ``horizon``: H, the number of outputs per window (steps 1..H ahead).
    - ``normalize``: the normalization its inputs must be in, e.g. ``"window-zscore"`` (None: any).
    - ``needs_contiguous``: True if `predict` needs C-contiguous rows; the engine then hands it a
      pooled (m, W) matrix instead of the overlapping strided view from ``sliding_window_view``.
    - ``predict(windows, out)``: write the (m, H) predictions for the (m, W) float64 ``windows``
      into ``out``. ``out`` may be a non-contiguous view (e.g. the transpose of a pooled (H, m)
      buffer), so write into it (``out[...] = ...`` or a ufunc's ``out=``), never rebind it. Do not
      write into ``windows`` (a strided view is read-only) and keep no reference to either array
      after returning: both are pooled and will be reused.

    The engine checks ``window``, ``horizon`` and ``normalize`` against the run's configuration
    (`check_compatible`) once, before the first batch. Plain attributes satisfy the protocol, so
    wrapping a foreign model is a small class; the two below are examples, not dependencies.

    ONNX Runtime (the graph takes a (m, W) double tensor named by the session)::

        class OnnxModel:
            window, horizon, normalize, needs_contiguous = 64, 1, "window-zscore", True

            def __init__(self, path: str) -> None:
                import onnxruntime as ort
                self._session = ort.InferenceSession(path)
                self._input = self._session.get_inputs()[0].name

            def predict(self, windows, out) -> None:
                # a float32 graph needs windows.astype(np.float32): a documented O(m W) copy
                (y,) = self._session.run(None, {self._input: windows})
                out[...] = y.reshape(out.shape)

    PyTorch (``torch.from_numpy`` shares memory with both arrays, strided ``out`` included)::

        class TorchModel:
            window, horizon, normalize, needs_contiguous = 64, 4, "window-zscore", True

            def __init__(self, module) -> None:
                self._module = module.eval().double()

            def predict(self, windows, out) -> None:
                import torch
                with torch.inference_mode():
                    torch.from_numpy(out).copy_(self._module(torch.from_numpy(windows)))

    The built-in models satisfy it too:

    >>> isinstance(LastValue(horizon=2), Model)
    True
    """

    @property
    def window(self) -> int | None: ...

    @property
    def horizon(self) -> int: ...

    @property
    def normalize(self) -> str | None: ...

    @property
    def needs_contiguous(self) -> bool: ...

    def predict(self, windows: FloatArray, out: FloatArray) -> None: ...


@runtime_checkable
class BufferSource(Protocol):
    """Where a model leases scratch memory: the buffer pool (``pipeline/pool.py``) implements it.

    ``acquire(n)`` returns a writable float64 array of exactly ``n`` elements, shape ``(n,)``, that
    no one else holds; ``release(buf)`` takes back that same array object. Every acquire is paired
    with a release in a ``try``/``finally``.

    >>> class Heap:
    ...     def acquire(self, n: int) -> FloatArray:
    ...         return np.empty(n)
    ...
    ...     def release(self, buf: FloatArray) -> None:
    ...         pass
    >>> isinstance(Heap(), BufferSource)
    True
    """

    def acquire(self, n: int) -> FloatArray: ...

    def release(self, buf: FloatArray) -> None: ...


def _name(model: object) -> str:
    source = getattr(model, "source", None)
    return str(source) if source is not None else type(model).__name__


def _check_positive_int(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1; found {value!r}")
    return int(value)


def _check_io(
    model: object, windows: FloatArray, out: FloatArray, window: int | None, horizon: int
) -> None:
    """Validate ``predict``'s arguments; O(1), so every model calls it on every batch."""
    if not isinstance(windows, np.ndarray) or windows.dtype != np.float64 or windows.ndim != 2:
        found = (
            f"{windows.dtype} array of shape {windows.shape}"
            if isinstance(windows, np.ndarray)
            else type(windows).__name__
        )
        raise ValueError(f"{_name(model)}: windows must be a 2-D float64 array; found {found}")
    if window is not None and windows.shape[1] != window:
        raise ValueError(
            f"{_name(model)}: windows have width {windows.shape[1]}; "
            f"the model needs window {window}"
        )
    if windows.shape[1] == 0:
        raise ValueError(f"{_name(model)}: windows have width 0; a window needs at least one tick")
    expected = (windows.shape[0], horizon)
    if not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != expected:
        found = (
            f"{out.dtype} array of shape {out.shape}"
            if isinstance(out, np.ndarray)
            else type(out).__name__
        )
        raise ValueError(
            f"{_name(model)}: out must be a float64 array of shape {expected}; found {found}"
        )
    if not out.flags.writeable:
        raise ValueError(f"{_name(model)}: out is read-only")


@dataclass(frozen=True, slots=True)
class _ParameterFree:
    """What a model without parameters of its own shares: any window, any normalization."""

    horizon: int = 1
    window: int | None = field(default=None, init=False)
    normalize: str | None = field(default=None, init=False)
    needs_contiguous: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        _check_positive_int("horizon", self.horizon)


@dataclass(frozen=True, slots=True)
class LastValue(_ParameterFree):
    """The naive forecast: every horizon step is the window's last (newest) value.

    The baseline every other model must beat; it works for any window and normalization.

    >>> windows = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    >>> out = np.empty((2, 2))
    >>> LastValue(horizon=2).predict(windows, out)
    >>> out
    array([[3., 3.],
           [6., 6.]])
    """

    def predict(self, windows: FloatArray, out: FloatArray) -> None:
        """Write the last column of ``windows`` into every column of ``out``."""
        _check_io(self, windows, out, self.window, self.horizon)
        np.copyto(out, windows[:, -1:])


@dataclass(frozen=True, slots=True)
class WindowMean(_ParameterFree):
    """The window mean for every horizon step: the forecast of a series that reverts to its mean.

    >>> windows = np.array([[1.0, 2.0, 6.0], [4.0, 4.0, 4.0]])
    >>> out = np.empty((2, 1))
    >>> WindowMean().predict(windows, out)
    >>> out
    array([[3.],
           [4.]])
    """

    def predict(self, windows: FloatArray, out: FloatArray) -> None:
        """Write each row's mean into the first column of ``out``, then copy it to the others."""
        _check_io(self, windows, out, self.window, self.horizon)
        np.mean(windows, axis=1, out=out[:, 0])
        np.copyto(out[:, 1:], out[:, :1])


class LinearModel:
    """A linear forecast per horizon step: ``out = windows @ weights + intercept``.

    ``weights`` has shape (W,) for horizon 1 or (W, H), row 0 weighting the oldest tick of the
    window; ``intercept`` is a scalar or has shape (H,). ``window``, ``horizon`` and ``normalize``
    state what the weights were fitted for; they are checked against the weights' shape here and
    against the run by `check_compatible`. `ridge_fit` fits the weights; `save` and `load` keep them
    in a ``.npz`` file.

    `predict` is one ``np.matmul`` into ``out`` and one in-place add. It reads the overlapping
    strided view of ``sliding_window_view`` as well as a contiguous matrix, and writes any ``out``
    layout. Numpy hands the product to BLAS only when each operand has unit stride on one axis and
    its other stride is at least that axis' length: a C-contiguous (m, W) matrix, or a strided view
    with stride >= W, into a C-contiguous ``out`` or the transpose of one. The overlapping view
    (stride < W) takes numpy's own loop instead: correct, but several times slower (about 8x at
    W=64, H=1; slower than copying into a pooled matrix first).

    >>> model = LinearModel([0.5, 0.5], 1.0, window=2, horizon=1, normalize=None)
    >>> out = np.empty((2, 1))
    >>> model.predict(np.array([[2.0, 4.0], [6.0, 8.0]]), out)
    >>> out
    array([[4.],
           [8.]])
    """

    __slots__ = ("_intercept", "_normalize", "_weights", "source")

    def __init__(
        self,
        weights: npt.ArrayLike,
        intercept: npt.ArrayLike,
        *,
        window: int,
        horizon: int,
        normalize: str | None,
        source: str | os.PathLike[str] | None = None,
    ) -> None:
        window = _check_positive_int("window", window)
        horizon = _check_positive_int("horizon", horizon)
        if normalize is not None and not isinstance(normalize, str):
            raise ValueError(f"normalize must be a string or None; found {normalize!r}")
        w = np.array(weights, dtype=np.float64, copy=True, order="C")
        if w.ndim == 1:
            w = w.reshape(-1, 1)
            if horizon != 1:
                raise ValueError(
                    f"weights of shape {w.shape[:1]} give horizon 1; this model says horizon "
                    f"{horizon}: pass weights of shape ({window}, {horizon})"
                )
        if w.shape != (window, horizon):
            raise ValueError(
                f"weights have shape {np.shape(weights)}; window {window} and horizon {horizon} "
                f"need ({window}, {horizon})" + (f" or ({window},)" if horizon == 1 else "")
            )
        b = np.array(intercept, dtype=np.float64, copy=True)
        if b.shape not in ((), (horizon,)):
            raise ValueError(
                f"intercept has shape {b.shape}; horizon {horizon} needs a scalar or ({horizon},)"
            )
        b = np.broadcast_to(b, (horizon,)).copy()
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ValueError("weights and intercept must be finite")
        w.flags.writeable = False
        b.flags.writeable = False
        self._weights: FloatArray = w
        self._intercept: FloatArray = b
        self._normalize = normalize
        self.source: str | None = None if source is None else os.fspath(source)

    @property
    def window(self) -> int:
        """W, the number of ticks per window."""
        return int(self._weights.shape[0])

    @property
    def horizon(self) -> int:
        """H, the number of steps ahead predicted per window."""
        return int(self._weights.shape[1])

    @property
    def normalize(self) -> str | None:
        """The normalization the weights were fitted on (None: any)."""
        return self._normalize

    @property
    def needs_contiguous(self) -> bool:
        """False: numpy's matmul reads strided views directly."""
        return False

    @property
    def weights(self) -> FloatArray:
        """The (W, H) weights, oldest tick first (read-only)."""
        return self._weights

    @property
    def intercept(self) -> FloatArray:
        """The (H,) intercept (read-only)."""
        return self._intercept

    def __repr__(self) -> str:
        source = f", source={self.source!r}" if self.source is not None else ""
        return (
            f"LinearModel(window={self.window}, horizon={self.horizon}, "
            f"normalize={self.normalize!r}{source})"
        )

    def predict(self, windows: FloatArray, out: FloatArray) -> None:
        """Write ``windows @ weights + intercept`` into ``out``; allocates nothing of size m."""
        _check_io(self, windows, out, self.window, self.horizon)
        # matmul writes through any out strides: BLAS for C- or F-ordered out (via the transpose
        # identity), numpy's own strided loop otherwise. No temporary of size m either way.
        np.matmul(windows, self._weights, out=out)
        np.add(out, self._intercept, out=out)

    def check_compatible(self, window: int, horizon: int, normalize: str | None) -> None:
        """Raise `ModelMismatchError` unless this model fits a run with these settings."""
        check_compatible(self, window=window, horizon=horizon, normalize=normalize)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to ``path`` as ``.npz`` (format ``tickpool.linear/1``), atomically.

        ``normalize`` None is stored as the empty string. The file is written exactly at ``path``
        (numpy would append ``.npz`` to a bare name) through a temporary file and a rename, so a
        crash leaves the old file or the new one, never half of one.
        """
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                format=np.str_(LINEAR_FORMAT),
                weights=self._weights,
                intercept=self._intercept,
                window=np.int64(self.window),
                horizon=np.int64(self.horizon),
                normalize=np.str_(self.normalize or ""),
            )
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LinearModel:
        """Read a model written by `save`; raise `ModelFileError` on anything malformed.

        Checks every key's presence, type and shape: ``weights`` must be (window,) or
        (window, horizon) and finite, ``intercept`` a scalar or (horizon,).
        """
        name = os.fspath(path)
        try:
            loaded = np.load(name, allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"linear model file {name} does not exist") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ModelFileError(name, None, f"unreadable data ({e})", "a .npz archive") from e
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ModelFileError(name, None, "a single .npy array", "a .npz archive")
        with loaded as data:
            missing = [k for k in _LINEAR_KEYS if k not in data.files]
            if missing:
                raise ModelFileError(
                    name, missing[0], f"no such key (keys: {sorted(data.files)})", f"{_LINEAR_KEYS}"
                )
            arrays: dict[str, np.ndarray] = {}
            for key in _LINEAR_KEYS:
                try:
                    arrays[key] = np.asarray(data[key])
                except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                    raise ModelFileError(
                        name, key, f"unreadable data ({e})", "a numpy array"
                    ) from e
        fmt = _load_str(name, "format", arrays["format"])
        if fmt != LINEAR_FORMAT:
            raise ModelFileError(name, "format", repr(fmt), repr(LINEAR_FORMAT))
        window = _load_int(name, "window", arrays["window"])
        horizon = _load_int(name, "horizon", arrays["horizon"])
        normalize = _load_str(name, "normalize", arrays["normalize"]) or None
        weights = arrays["weights"]
        shapes = [(window, horizon)] + ([(window,)] if horizon == 1 else [])
        if weights.shape not in shapes:
            expected = " or ".join(str(s) for s in shapes)
            raise ModelFileError(
                name,
                "weights",
                f"shape {weights.shape}",
                f"{expected} for window {window} and horizon {horizon}",
            )
        _check_float(name, "weights", weights)
        intercept = arrays["intercept"]
        if intercept.shape not in ((), (horizon,)):
            raise ModelFileError(
                name,
                "intercept",
                f"shape {intercept.shape}",
                f"() or ({horizon},) for horizon {horizon}",
            )
        _check_float(name, "intercept", intercept)
        return cls(
            weights, intercept, window=window, horizon=horizon, normalize=normalize, source=name
        )


def _load_str(path: str, key: str, value: np.ndarray) -> str:
    if value.shape != () or value.dtype.kind != "U":
        raise ModelFileError(path, key, f"{value.dtype} array of shape {value.shape}", "a string")
    return str(value[()])


def _load_int(path: str, key: str, value: np.ndarray) -> int:
    if value.shape != () or value.dtype.kind not in "iu" or int(value) < 1:
        found = f"{value[()]!r}" if value.shape == () else f"array of shape {value.shape}"
        raise ModelFileError(path, key, found, "an integer >= 1")
    return int(value)


def _check_float(path: str, key: str, value: np.ndarray) -> None:
    if value.dtype.kind != "f":
        raise ModelFileError(path, key, f"dtype {value.dtype}", "a float array")
    if not np.isfinite(value).all():
        raise ModelFileError(path, key, "NaN or infinite values", "finite values")


def check_compatible(model: Model, *, window: int, horizon: int, normalize: str | None) -> None:
    """Raise `ModelMismatchError` unless ``model`` fits a run with this window, horizon, normalize.

    A model's None (any window, any normalization) fits everything; horizons must be equal.

    >>> check_compatible(LastValue(horizon=1), window=64, horizon=1, normalize="zscore")
    >>> try:
    ...     check_compatible(LastValue(horizon=1), window=64, horizon=2, normalize="zscore")
    ... except ModelMismatchError as e:
    ...     print(e)
    LastValue was fitted with horizon 1; this run uses horizon 2
    """
    fits_window = model.window is None or model.window == window
    fits_normalize = model.normalize is None or model.normalize == normalize
    fits_horizon = model.horizon == horizon
    if fits_window and fits_normalize and fits_horizon:
        return
    ours = []
    theirs = []
    if not (fits_window and fits_normalize):
        ours.append(f"window {model.window}")
        theirs.append(f"window {window}")
    if not fits_horizon:
        ours.append(f"horizon {model.horizon}")
        theirs.append(f"horizon {horizon}")
    if not (fits_window and fits_normalize):
        ours.append(f"normalize {model.normalize!r}")
        theirs.append(f"normalize {normalize!r}")
    raise ModelMismatchError(
        f"{_name(model)} was fitted with {_join(ours)}; this run uses {_join(theirs)}"
    )


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class Ensemble:
    """The weighted mean of several models that all read the same windows.

    Every member gets the very ``windows`` object the ensemble was given: no per-member copy of the
    input. Members write in turn, the first into ``out``, the others into one (m, H) scratch buffer
    leased from ``scratch`` for the duration of `predict` and released before it returns, also when
    a member raises. ``weights`` are normalized to sum 1 (default: equal). Members must agree on
    ``window``, ``horizon`` and ``normalize`` (None agrees with anything), else
    `ModelMismatchError` names the member; ``needs_contiguous`` is True if any member needs it.

    >>> class Heap:
    ...     def acquire(self, n: int) -> FloatArray:
    ...         return np.empty(n)
    ...
    ...     def release(self, buf: FloatArray) -> None:
    ...         pass
    >>> both = Ensemble([LastValue(), WindowMean()], [3.0, 1.0], scratch=Heap())
    >>> out = np.empty((1, 1))
    >>> both.predict(np.array([[0.0, 4.0]]), out)  # 0.75 * 4 + 0.25 * 2
    >>> out
    array([[3.5]])
    """

    __slots__ = (
        "_members",
        "_scratch",
        "_weights",
        "horizon",
        "needs_contiguous",
        "normalize",
        "window",
    )

    def __init__(
        self,
        members: Sequence[Model],
        weights: Sequence[float] | None = None,
        *,
        scratch: BufferSource,
    ) -> None:
        members = tuple(members)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if weights is None:
            weights = [1.0] * len(members)
        w = np.array(weights, dtype=np.float64)
        if w.shape != (len(members),):
            raise ValueError(
                f"ensemble weights have shape {w.shape}; {len(members)} members need "
                f"({len(members)},)"
            )
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"ensemble weights must be finite, >= 0, with a positive sum; found {w}"
            )
        self._members = members
        self._weights = tuple(float(x) for x in w / w.sum())
        self._scratch = scratch
        self.horizon: int = members[0].horizon
        self.window: int | None = None
        self.normalize: str | None = None
        window_from = normalize_from = 0
        for i, member in enumerate(members):
            if member.horizon != self.horizon:
                raise ModelMismatchError(
                    f"ensemble member {i} ({member!r}) has horizon {member.horizon}; "
                    f"member 0 ({members[0]!r}) has horizon {self.horizon}"
                )
            if member.window is not None:
                if self.window is not None and member.window != self.window:
                    raise ModelMismatchError(
                        f"ensemble member {i} ({member!r}) needs window {member.window}; "
                        f"member {window_from} ({members[window_from]!r}) needs window "
                        f"{self.window}"
                    )
                self.window, window_from = member.window, i
            if member.normalize is not None:
                if self.normalize is not None and member.normalize != self.normalize:
                    raise ModelMismatchError(
                        f"ensemble member {i} ({member!r}) needs normalize {member.normalize!r}; "
                        f"member {normalize_from} ({members[normalize_from]!r}) needs normalize "
                        f"{self.normalize!r}"
                    )
                self.normalize, normalize_from = member.normalize, i
        self.needs_contiguous: bool = any(m.needs_contiguous for m in members)

    @property
    def members(self) -> tuple[Model, ...]:
        """The member models, in order."""
        return self._members

    @property
    def weights(self) -> tuple[float, ...]:
        """The normalized weights (sum 1), one per member."""
        return self._weights

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{w:g} * {m!r}" for w, m in zip(self._weights, self._members, strict=True)
        )
        return f"Ensemble({parts})"

    def predict(self, windows: FloatArray, out: FloatArray) -> None:
        """Write the weighted mean of the members' predictions into ``out``."""
        _check_io(self, windows, out, self.window, self.horizon)
        first, *rest = zip(self._weights, self._members, strict=True)
        first[1].predict(windows, out)
        np.multiply(out, first[0], out=out)
        m, h = out.shape
        if not rest or m == 0:
            return
        n = m * h
        buf = self._scratch.acquire(n)
        try:
            if not isinstance(buf, np.ndarray) or buf.shape != (n,) or buf.dtype != np.float64:
                found = (
                    f"{buf.dtype} array of shape {buf.shape}"
                    if isinstance(buf, np.ndarray)
                    else type(buf).__name__
                )
                raise ValueError(
                    f"scratch source {self._scratch!r} returned {found}; expected float64 ({n},)"
                )
            part = buf.reshape(m, h)  # a view: a 1-D array of any stride splits into rows
            for weight, member in rest:
                member.predict(windows, part)
                np.multiply(part, weight, out=part)
                np.add(out, part, out=out)
        finally:
            self._scratch.release(buf)


def ridge_fit(
    X: npt.ArrayLike, Y: npt.ArrayLike, alpha: float = 1e-3
) -> tuple[FloatArray, FloatArray]:
    """Fit ridge least squares with an unpenalized intercept: weights (W, H) and intercept (H,).

    Minimizes ``|Y - X @ w - b|^2 + alpha * m * |w|^2`` over rows of ``X`` (m, W) and ``Y`` (m,)
    or (m, H): centre both (two passes, so raw prices near 10,000 keep their digits), solve
    ``(Xc' Xc + alpha m I) w = Xc' Yc`` and set ``b = mean(Y) - mean(X) @ w``. ``alpha`` scales
    with m, so the same alpha means the same shrinkage on a day or a year of ticks. A 1-D ``Y``
    gives weights (W, 1) and intercept (1,), ready for ``LinearModel(w, b, horizon=1, ...)``.

    ``X`` may be any strided view (a ``sliding_window_view`` included) and is never written;
    fitting is offline, so this allocates the centred copies (m, W) and (m, H).

    >>> X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [2.0, 1.0]])
    >>> w, b = ridge_fit(X, X @ [2.0, -1.0] + 0.5, alpha=0.0)
    >>> np.round(w.ravel(), 12), np.round(b, 12)
    (array([ 2., -1.]), array([0.5]))
    """
    x = np.asarray(X, dtype=np.float64)
    y = np.asarray(Y, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"X must be 2-D (m, W); found shape {x.shape}")
    y2 = y.reshape(-1, 1) if y.ndim == 1 else y
    if y2.ndim != 2 or y2.shape[0] != x.shape[0]:
        raise ValueError(
            f"Y must be ({x.shape[0]},) or ({x.shape[0]}, H) to match X; found {y.shape}"
        )
    m = x.shape[0]
    if m == 0 or x.shape[1] == 0 or y2.shape[1] == 0:
        raise ValueError(f"nothing to fit: X has shape {x.shape}, Y has shape {y.shape}")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0; found {alpha!r}")
    bad = ~np.isfinite(x).all(axis=1) | ~np.isfinite(y2).all(axis=1)
    if bad.any():
        raise ValueError(
            f"X and Y must be finite; {int(bad.sum())} of {m} rows are not (first: row "
            f"{int(np.argmax(bad))}); drop them before fitting"
        )
    x_mean, xc = _centre(x)
    y_mean, yc = _centre(y2)
    gram = xc.T @ xc
    gram[np.diag_indices_from(gram)] += alpha * m
    try:
        weights = np.asarray(np.linalg.solve(gram, xc.T @ yc), dtype=np.float64)
    except np.linalg.LinAlgError as e:
        raise np.linalg.LinAlgError(
            f"ridge_fit: X'X is singular (X {x.shape} has constant or collinear columns); "
            f"use alpha > 0 (found {alpha})"
        ) from e
    intercept = np.asarray(y_mean - x_mean @ weights, dtype=np.float64)
    return weights, intercept


def _centre(a: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Column means and the centred copy, with a second pass that removes the first's rounding."""
    mean = a.mean(axis=0)
    centred = a - mean
    fix = centred.mean(axis=0)
    centred -= fix
    return mean + fix, centred


def resolve_model(spec: str, *, window: int, horizon: int, normalize: str | None) -> Model:
    """Turn a ``--model`` spec into a model that fits this run.

    ``"last"`` is `LastValue`, ``"mean"`` is `WindowMean`; anything else is the path of a linear
    model file written by `LinearModel.save`, loaded and checked with `check_compatible` (a
    mismatch raises `ModelMismatchError`, a missing file `FileNotFoundError` saying which specs are
    accepted).

    >>> resolve_model("last", window=64, horizon=2, normalize="zscore")
    LastValue(horizon=2, window=None, normalize=None, needs_contiguous=False)
    """
    if spec == "last":
        return LastValue(horizon=horizon)
    if spec == "mean":
        return WindowMean(horizon=horizon)
    if not Path(spec).is_file():
        raise FileNotFoundError(
            f"model {spec!r}: no such file; a model spec is 'last', 'mean', or the path of a "
            f"linear model .npz written by LinearModel.save ({LINEAR_FORMAT})"
        )
    model = LinearModel.load(spec)
    check_compatible(model, window=window, horizon=horizon, normalize=normalize)
    return model
