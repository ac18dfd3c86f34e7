"""Collect the rows of every bench/results/*.json into bench/results/summary.md: one markdown
table of measured figures with their targets, whether each was met, and the command that
reproduces it. Every benchmark script calls `write_summary()` when it finishes, so the table
always reflects the latest run of each script; `make bench` prints it at the end.

Run alone from the repository root: .venv/bin/python -m bench.summary
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._stack import RESULTS, RUN_ONE

HEADER = "| figure | value | target | met? | command |\n|---|---|---|---|---|\n"


def _met(value: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "—"}[value]


def _foreign_load(value: Any) -> list[float]:
    """Every `foreign_cpu_cores` a benchmark recorded (other processes' CPU meanwhile)."""
    if isinstance(value, dict):
        found = [float(v) for k, v in value.items() if k == "foreign_cpu_cores"]
        return found + [x for v in value.values() for x in _foreign_load(v)]
    if isinstance(value, list):
        return [x for v in value for x in _foreign_load(v)]
    return []


def render(results_dir: Path = RESULTS) -> str:
    lines = [
        "# YouSync benchmark results",
        "",
        f"Reproduce: `make bench` runs every script; one alone: `{RUN_ONE}`.",
        "",
    ]
    sections = []
    for path in sorted(results_dir.glob("*.json")):
        payload = json.loads(path.read_text())
        rows = payload.get("rows") or []
        if not rows:
            continue
        machine = payload.get("machine", {})
        foreign = _foreign_load(payload.get("figures", {}))
        load = (
            f" Other processes' CPU during the measurements: up to {max(foreign):.2f} cores."
            if foreign
            else ""
        )
        sections.append(
            f"## {payload['benchmark']}\n\nMeasured {payload['measured_at']} "
            f"({machine.get('cpus')} CPUs, Python {machine.get('python')}, loopback).{load}\n\n"
            + HEADER
            + "".join(
                f"| {row['figure']} | {row['value']} | {row['target'] or '—'} | "
                f"{_met(row['met'])} | `{row['command']}` |\n"
                for row in rows
            )
        )
    if not sections:
        return "\n".join([*lines, "No results yet: run `make bench`.", ""])
    return "\n".join(lines) + "\n" + "\n".join(sections)


def write_summary() -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "summary.md"
    path.write_text(render())
    return path


if __name__ == "__main__":
    print(write_summary().read_text())
