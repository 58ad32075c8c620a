"""Every docstring example in the package (and the benchmarks' helpers) runs and holds."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import tickpool.connectors
import tickpool.operators
import tickpool.pipeline

REPO = Path(__file__).resolve().parents[1]


def _modules_with_examples() -> list[str]:
    names = [
        info.name
        for pkg in (tickpool.pipeline, tickpool.operators, tickpool.connectors)
        for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")
    ]
    names += [f"benchmarks.{p.stem}" for p in sorted((REPO / "benchmarks").glob("*.py"))]
    found = []
    for name in names:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        if ">>> " in Path(spec.origin).read_text():
            found.append(name)
    return found


MODULES = _modules_with_examples()


def test_the_examples_are_found() -> None:
    # Modules known to carry examples, so a broken discovery cannot pass as "nothing to run".
    assert {"tickpool.operators.fused", "tickpool.pipeline.pool", "benchmarks._report"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags)
    assert result.attempted > 0
    assert result.failed == 0
