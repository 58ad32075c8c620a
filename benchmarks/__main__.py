"""Run every tickpool benchmark, each in its own process, and collect their markdown.

    python -m benchmarks [--quick] [--only NAME ...] [--out docs/benchmarks.md]

A benchmark is a module ``benchmarks/<name>.py`` listed in ``MODULES`` whose ``main(argv)``
prints markdown (headings and tables) to stdout and accepts ``--quick`` (a module that rejects
``--quick`` is run again without it). Modules in the list that do not exist (yet) are skipped.
A module that draws a figure sets ``PLOT_NAME = "name.png"`` and accepts ``--plot PATH``: with
``--out``, the figure is written beside the markdown file.

Each module runs as ``python -m benchmarks.<name>`` in a child process, one after the other,
so no benchmark inherits another's heap or warm caches; the end-to-end benchmarks further run
each variant in a process of its own. With ``--out`` the collected output is written to that
file, under a header naming the command, the machine and the date. The file is regenerated
whole every time: the hand-written optimization log lives in ``docs/optimizations.md``.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._report import machine_line

MODULES = (
    "bench_pool",
    "bench_operators",
    "bench_original",
    "bench_replay",
    "bench_e2e",
    "bench_feed",
    "bench_memory",
)
HERE = Path(__file__).resolve().parent
REPO = HERE.parent

HOW_TO_READ = """\
## How to read this

Every number is a median of several runs, and the variants compared in one table ran
interleaved in the same session, in a new order each repeat, so machine noise hits them alike:
trust the ratios within a table more than absolute numbers, which move from machine to machine
(and a `--quick` run uses smaller inputs and fewer repeats). "Ticks/s" is ticks processed per
second of the job itself, not counting interpreter start-up and imports, on one worker with one
BLAS thread unless a table says otherwise. "Peak anon" is anonymous resident memory (heap, numpy
arrays, pool buffers), which excludes the file-backed pages of memory-mapped input; "peak RSS"
includes them. Where a slow variant ran on a prefix of the data, its row says so. Every
end-to-end variant's predictions are checked against tickpool's before its timing is reported
(the "max rel diff" tables): a variant that computed something else would stop the run.
"""


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    markdown: str
    seconds: float
    ok: bool


def available(names: tuple[str, ...] = MODULES) -> list[str]:
    """The benchmark modules of ``names`` that exist in this folder."""
    return [n for n in names if (HERE / f"{n}.py").is_file()]


def plot_name(name: str) -> str | None:
    """The module's ``PLOT_NAME`` (read from its source, without importing it), or None."""
    tree = ast.parse((HERE / f"{name}.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "PLOT_NAME" for t in targets):
                value = node.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    return value.value
    return None


def run_module(name: str, args: list[str]) -> Section:
    """Run ``python -m benchmarks.<name> ARGS``; its stdout is the section, stderr passes on."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 2 and "unrecognized arguments: --quick" in proc.stderr:
        return run_module(name, [a for a in args if a != "--quick"])
    seconds = time.perf_counter() - t0
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        failed = f"# {name}\n\n**failed** (exit code {proc.returncode}):\n\n```\n{tail}\n```\n"
        return Section(name, failed, seconds, ok=False)
    return Section(name, proc.stdout.strip() + "\n", seconds, ok=True)


def demote(markdown: str) -> str:
    """Push every heading one level down, so the collected file has a single title."""
    out = []
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if line.startswith("#") and not fenced else line)
    return "\n".join(out) + "\n"


def document(sections: list[Section], command: str, when: dt.datetime) -> str:
    """The whole ``docs/benchmarks.md``: header, how to read it, every section."""
    cpus = os.cpu_count()
    head = [
        "# Benchmarks",
        "",
        "<!-- Generated by python -m benchmarks; do not edit by hand (it is rewritten whole). -->",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}, {cpus} CPUs  ",
        f"Date: {when:%Y-%m-%d %H:%M} UTC",
        "",
        "The before/after record of every optimization is kept by hand in "
        "[optimizations.md](optimizations.md), so regenerating this file never loses it.",
        "",
        HOW_TO_READ,
        "Sections, and the time each took: "
        + ", ".join(f"{s.name} ({s.seconds:.0f} s)" for s in sections)
        + ".",
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(demote(s.markdown) for s in sections)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs, few repeats (minutes)")
    ap.add_argument(
        "--only", nargs="+", metavar="NAME", help=f"run only these of: {', '.join(available())}"
    )
    ap.add_argument("--out", type=Path, help="write the collected markdown here")
    args = ap.parse_args(argv)
    names = available()
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    sections: list[Section] = []
    for name in names:
        extra = ["--quick"] if args.quick else []
        plot = plot_name(name)
        if args.out is not None and plot is not None:
            extra += ["--plot", str(args.out.parent / plot)]
        print(f"-- {name} {' '.join(extra)}", file=sys.stderr, flush=True)
        section = run_module(name, extra)
        print(section.markdown, flush=True)
        sections.append(section)
    if args.out is not None:
        when = dt.datetime.now(dt.UTC)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(document(sections, command.strip(), when), encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(s.ok for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
