"""Compare the `make bench` headline figures of two commits, measured interleaved on this machine.

What it answers: did a change (e.g. a restructuring that should change no behaviour) make the
product slower? For each figure it reports new/old of the medians over `--runs` rounds, next
to the limit (≤ 1.10):

  SSE delivery latency p99, 1,000 clients   bench_sse_fanout --sizes 1000 --naive-clients 0
  1 MB upload, request → 202, p99           bench_upload_latency (BENCH_RUNS=20)
  CPU of our own code per job               bench_pipeline (cpu_per_job.throttled, see FIGURES)

Why interleaved: both commits can only be measured on the same shared, noisy two-core machine
(other sessions run test suites on it), and its load drifts over minutes. Measuring all runs
of one commit and then all of the other would turn that drift into a difference between the
commits. So every round runs both, and the order alternates (old, new | new, old | old, new …):
a slow stretch of the machine lands on both commits about equally, and the median over rounds
drops the rounds it hit hardest. Each commit runs in its own checkout with its own venv, made
by that commit's own `make setup` (their requirements differ), and its own bench scripts — the
figures are each commit's own `make bench` measurement, not this script's.

Why the quiet-wait cap: every bench script first waits for the machine to be quiet (other
processes using < 0.2 cores), up to 900 s per call. On a shared machine that wait usually runs
out, which would make one round cost up to 1.5 h of waiting. By default this script caps the
wait at `--quiet-timeout` seconds (the same for both commits; the scripts still record the
foreign load, which is reported here too); `--quiet-timeout script` keeps the scripts' own.

Run from the repository root:
    .venv/bin/python -m bench.compare_commits OLD_REV NEW_REV [--runs 5]
Checkouts and logs go under --workdir (default /tmp/yousync-cmp); the comparison is written to
bench/results/compare_<old>_<new>.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = Path("/tmp/yousync-cmp")
LIMIT = 1.10  # new/old of the medians must stay at or below this
STAMP = Path(".venv") / ".requirements.stamp"  # both layouts' Makefiles: venv is set up
BENCH_TIMEOUT = 3600.0  # one bench script, seconds; far above a normal run


def legacy_import_path(root: Path) -> str:
    """Only for commits from before the package layout (no bench/__init__.py), whose modules
    were importable only from these folders: their Makefile ran each bench script as a file
    with the environment variable PYTHONPATH set to this value. The package layout needs none."""
    return os.pathsep.join(str((root / r).resolve()) for r in (".", "back-end", "analysis-server"))


# Runs one bench script with `bench._stack.wait_for_quiet` capped at argv[1] seconds, the rest
# as the script itself would run: `python -m bench.<name>` (new layout) or `python bench/x.py`
# (old layout). `-c` puts the working directory, the checkout's root, first on the path. With
# argv[2] == "lean", the parts no compared figure reads are skipped, the same way for both
# commits (a round otherwise takes ~24 min): bench_upload_latency's 50 MB step uploads 1 MB
# files instead (only the 1 MB figure is compared), and bench_pipeline's end-to-end runs with 1
# and 2 workers are left out (only the in-process CPU per job is compared). The script's module
# is loaded without running main(); the trims replace names in its globals; then main() runs.
QUIET_CAP_LAUNCHER = """\
import functools, os, runpy, sys
cap, lean, target, args = float(sys.argv[1]), sys.argv[2] == "lean", sys.argv[3], sys.argv[4:]
is_file = target.endswith(".py")
import bench._stack as _stack
_stack.wait_for_quiet = functools.partial(_stack.wait_for_quiet, timeout=cap)
sys.argv = [target, *args]
if is_file:
    loaded = runpy.run_path(target, run_name="__compare__")
else:
    loaded = runpy.run_module(target, run_name="__compare__", alter_sys=True)
main = loaded["main"]
script = main.__globals__
name = os.path.basename(target).removesuffix(".py").rsplit(".", 1)[-1]
if lean and name == "bench_upload_latency":
    of_size = script["wav_of_size"]
    script["wav_of_size"] = lambda megabytes: of_size(min(megabytes, 1))
if lean and name == "bench_pipeline":
    script["end_to_end"] = lambda workers: {
        "workers": workers, "jobs": 0, "jobs_per_min": 0.0, "job_seconds_p50": 0.0
    }
main()
"""


@dataclass(frozen=True)
class Bench:
    """One bench script of a checkout and the options that keep a round short."""

    script: str  # bench/<script>.py
    result: str  # what it writes: bench/results/<result>.json
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    bench: str  # Bench.script
    path: tuple[str, ...]  # keys into the result's "figures"
    foreign: tuple[str, ...]  # the foreign load (cores) recorded for the same window


BENCHES: tuple[Bench, ...] = (
    # One size, no naive-polling reference: only the product's own 1,000-client round.
    Bench("bench_sse_fanout", "sse_fanout", ("--sizes", "1000", "--naive-clients", "0")),
    # BENCH_RUNS explicit so both commits surely get the same 20 × 1 MB (50 MB: lean, see above);
    # the spool only (the compared figure is its; scripts from before `--staging` ignore it).
    Bench(
        "bench_upload_latency", "upload_latency", ("--staging", "spool"), env={"BENCH_RUNS": "20"}
    ),
    # No options: end to end with 1 and 2 workers, then the in-process CPU measurement.
    Bench("bench_pipeline", "pipeline"),
)

FIGURES: tuple[Figure, ...] = (
    Figure(
        "sse_1k_p99_ms",
        "SSE delivery latency p99, 1,000 clients, 1,000 events/s",
        "ms",
        "bench_sse_fanout",
        ("rounds", "ours_1000", "load", "latency", "p99_ms"),
        ("rounds", "ours_1000", "load", "foreign_cpu_cores"),
    ),
    # The script stores p50 and max of the 20 runs. bench._stack.percentile is nearest-rank,
    # index round(0.99 × (n − 1)): for n ≤ 50 runs that is the last one, so p99 is the max.
    Figure(
        "upload_1mb_p99_ms",
        "1 MB upload, request → 202, p99 (= max of 20 runs)",
        "ms",
        "bench_upload_latency",
        ("1MB", "to_202_ms_max"),
        ("foreign_cpu_cores",),
    ),
    # cpu_per_job has three variants; `throttled` is the product's own cost of a job: its
    # default progress throttle, with preparation (pydub + ffmpeg: third-party work), S3 and the
    # analysis stubbed out. `stubbed` turns the throttle off (a worst case of progress writes,
    # not the product's setting) and `real` adds pydub/ffmpeg's CPU.
    Figure(
        "cpu_ms_per_job",
        "CPU of our code per job (p50; default throttle, prepare/S3/analysis stubbed)",
        "ms",
        "bench_pipeline",
        ("cpu_per_job", "throttled", "cpu_ms_per_job_p50"),
        ("cpu_per_job", "throttled", "foreign_cpu_cores"),
    ),
)


@dataclass(frozen=True)
class Checkout:
    label: str  # "old" or "new"
    rev: str  # as given
    sha: str
    short: str
    root: Path

    @property
    def packaged(self) -> bool:
        """The package layout runs bench scripts as modules (`python -m bench.<name>`)."""
        return (self.root / "bench" / "__init__.py").exists()

    @property
    def python(self) -> Path:
        # Not resolved: the bench's devtools find uvicorn/celery next to sys.executable.
        return self.root / ".venv" / "bin" / "python"


def git(*args: str, cwd: Path = REPO_ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def prepare_checkout(label: str, rev: str, workdir: Path) -> Checkout:
    """A clone of this repository at `rev` under `workdir` with its own venv (its `make
    setup`). A clone, not a worktree, so this repository's .git is left untouched. Re-runs
    reuse both the clone and a venv whose requirements stamp is present."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    short = git("rev-parse", "--short=7", sha)
    root = workdir / sha[:12]
    if not (root / ".git").exists():
        print(f"==> {label}: cloning {rev} ({short}) into {root}", flush=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "clone", "--quiet", "--no-checkout", str(REPO_ROOT), str(root)], check=True
        )
        try:
            git("checkout", "--quiet", "--detach", sha, cwd=root)
        except subprocess.CalledProcessError:  # a commit no branch of the source reaches
            git("fetch", "--quiet", "origin", sha, cwd=root)
            git("checkout", "--quiet", "--detach", sha, cwd=root)
    elif git("rev-parse", "HEAD", cwd=root) != sha:
        raise SystemExit(f"{root} is not at {sha}; remove it and run again")
    checkout = Checkout(label, rev, sha, short, root)
    if (root / STAMP).exists():
        print(f"==> {label}: reusing {root / '.venv'} (requirements stamp present)", flush=True)
    else:
        print(f"==> {label}: make setup in {root}", flush=True)
        subprocess.run(["make", "setup"], cwd=root, env=clean_env(), check=True)
    return checkout


def clean_env() -> dict[str, str]:
    """This process's environment without anything that points Python at this repository."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {key: value for key, value in os.environ.items() if key not in drop}


def bench_command(
    checkout: Checkout, bench: Bench, quiet_timeout: float | None, *, lean: bool = True
) -> tuple[list[str], dict[str, str], str]:
    """The argv and environment that run `bench` of `checkout` from its root, and how the
    run reads as a shell command (for its log)."""
    env = {**clean_env(), **bench.env}
    shown = [f"{name}={value}" for name, value in bench.env.items()]
    if checkout.packaged:
        target = f"bench.{bench.script}"
        plain = [str(checkout.python), "-m", target]
    else:
        target = f"bench/{bench.script}.py"
        plain = [str(checkout.python), target]
        env["PYTHONPATH"] = legacy_import_path(checkout.root)
        shown.append(f"[import path for the old layout: {env['PYTHONPATH']}]")
    shown += [*plain, *bench.args]
    described = f"cd {checkout.root} && {' '.join(shown)}"
    if quiet_timeout is None and not lean:
        return [*plain, *bench.args], env, described
    quiet_timeout = 900.0 if quiet_timeout is None else quiet_timeout
    mode = "lean" if lean else "full"
    launcher = [str(checkout.python), "-c", QUIET_CAP_LAUNCHER, str(quiet_timeout), mode, target]
    described += f"  (wait_for_quiet capped at {quiet_timeout:g} s, {mode})"
    return [*launcher, *bench.args], env, described


def run_bench(
    checkout: Checkout, bench: Bench, quiet_timeout: float | None, log: Path, *, lean: bool = True
) -> tuple[dict[str, Any] | None, float]:
    """Run one bench script; returns its result's "figures" (None if it failed) and seconds."""
    result = checkout.root / "bench" / "results" / f"{bench.result}.json"
    result.unlink(missing_ok=True)  # never read an earlier run's figures
    argv, env, described = bench_command(checkout, bench, quiet_timeout, lean=lean)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        out.write(f"$ {described}\n")
        out.flush()
        proc = subprocess.Popen(
            argv,
            cwd=checkout.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, so a timeout can stop all of it
        )
        try:
            code = proc.wait(BENCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = stop(proc)
            out.write(f"\n[compare_commits] stopped after {BENCH_TIMEOUT:.0f}s\n")
    seconds = time.perf_counter() - started
    if code != 0 or not result.exists():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"    {bench.script} failed (exit {code}); log {log}:", *tail, sep="\n      ")
        return None, seconds
    shutil.copy(result, log.with_suffix(".json"))
    figures: dict[str, Any] = json.loads(result.read_text())["figures"]
    return figures, seconds


def stop(proc: subprocess.Popen[bytes]) -> int:
    """Interrupt a bench script (its `finally` blocks stop the stack it started), then kill
    its process group if it does not end."""
    try:
        proc.send_signal(signal.SIGINT)
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def dig(data: Any, path: Sequence[str]) -> float | None:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return float(data) if isinstance(data, int | float) else None


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def summarise(
    values: dict[str, dict[str, list[float | None]]],
    foreign: dict[str, dict[str, list[float | None]]],
) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for figure in FIGURES:
        old, new = values[figure.key]["old"], values[figure.key]["new"]
        old_median, new_median = median(old), median(new)
        ratio = (
            round(new_median / old_median, 3)
            if old_median is not None and new_median is not None and old_median > 0
            else None
        )
        summary[figure.key] = {
            "label": figure.label,
            "unit": figure.unit,
            "source": f"bench/{figure.bench}.py → figures.{'.'.join(figure.path)}",
            "old": old,
            "new": new,
            "old_median": old_median,
            "new_median": new_median,
            "ratio_new_over_old": ratio,
            "within_limit": None if ratio is None else ratio <= LIMIT,
            "foreign_cpu_cores": foreign[figure.key],
        }
    return summary


def markdown(report: dict[str, Any]) -> str:
    old, new = report["old"], report["new"]
    yes_no = {True: "yes", False: "**no**", None: "—"}
    lines = [
        f"# Bench comparison: {old['short']} (old) vs {new['short']} (new)",
        "",
        f"Medians of {report['runs']} interleaved round(s) on one machine "
        f"({report['machine']['cpus']} CPUs, shared); limit new/old ≤ {LIMIT:.2f}. "
        f"Quiet wait per bench script: {report['quiet_timeout']}.",
        "",
        f"- old: `{old['rev']}` = {old['sha']} ({old['layout']} layout)",
        f"- new: `{new['rev']}` = {new['sha']} ({new['layout']} layout)",
        "",
        "| figure | old runs | new runs | old median | new median | new/old | ≤ limit? |",
        "|---|---|---|---|---|---|---|",
    ]
    for item in report["figures"].values():
        unit = item["unit"]
        lines.append(
            f"| {item['label']} ({unit}) "
            f"| {', '.join(fmt(v) for v in item['old'])} "
            f"| {', '.join(fmt(v) for v in item['new'])} "
            f"| {fmt(item['old_median'])} | {fmt(item['new_median'])} "
            f"| {fmt(item['ratio_new_over_old'], 3)} | {yes_no[item['within_limit']]} |"
        )
    lines += [
        "",
        "Other processes' CPU (cores) during each measured window, old | new:",
        "",
    ]
    for item in report["figures"].values():
        load = item["foreign_cpu_cores"]
        lines.append(
            f"- {item['label']}: {', '.join(fmt(v) for v in load['old'])} | "
            f"{', '.join(fmt(v) for v in load['new'])}"
        )
    lines += ["", "| round | order | wall time | per script (s) |", "|---|---|---|---|"]
    for round_ in report["rounds"]:
        scripts = "; ".join(
            f"{label} {name.removeprefix('bench_')} {seconds:.0f}"
            for label in round_["order"]
            for name, seconds in round_["script_seconds"][label].items()
        )
        lines.append(
            f"| {round_['round']} | {' → '.join(round_['order'])} "
            f"| {round_['seconds'] / 60:.1f} min | {scripts} |"
        )
    lines += ["", "Sources:", ""]
    lines += [f"- {item['label']}: {item['source']}" for item in report["figures"].values()]
    lines += [
        "",
        "CPU per job is `cpu_per_job.throttled`: the product's own cost of a job (its default "
        "progress throttle; preparation, S3 and the analysis stubbed). 1 MB p99 is the max of "
        "the 20 runs (nearest-rank p99 of ≤ 50 values).",
        "",
        f"Reproduce: `.venv/bin/python -m bench.compare_commits {old['rev']} {new['rev']} "
        f"--runs {report['runs']}`",
    ]
    return "\n".join(lines) + "\n"


def parse_quiet_timeout(text: str) -> float | None:
    if text == "script":
        return None
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("seconds ≥ 0, or 'script'")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the reference commit (any git revision)")
    parser.add_argument("new", help="the commit under test (any git revision)")
    parser.add_argument("--runs", type=int, default=5, help="rounds; each runs both commits")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="checkouts, logs")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results", help="where the report goes"
    )
    parser.add_argument(
        "--quiet-timeout",
        type=parse_quiet_timeout,
        default=60.0,
        help="cap (s) on each script's wait for a quiet machine; 'script' keeps its own 900 s",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="run the scripts whole (the 50 MB uploads, the end-to-end pipeline runs)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    workdir: Path = args.workdir.resolve()
    checkouts = {
        "old": prepare_checkout("old", args.old, workdir),
        "new": prepare_checkout("new", args.new, workdir),
    }
    stamp = time.strftime("%Y%m%dT%H%M%S")
    logs = workdir / "runs" / f"{checkouts['old'].short}_{checkouts['new'].short}_{stamp}"
    values: dict[str, dict[str, list[float | None]]] = {
        f.key: {"old": [], "new": []} for f in FIGURES
    }
    foreign: dict[str, dict[str, list[float | None]]] = {
        f.key: {"old": [], "new": []} for f in FIGURES
    }
    rounds: list[dict[str, Any]] = []
    for index in range(args.runs):
        order = ["old", "new"] if index % 2 == 0 else ["new", "old"]
        print(f"==> round {index + 1}/{args.runs}: {' then '.join(order)}", flush=True)
        started = time.perf_counter()
        script_seconds: dict[str, dict[str, float]] = {}
        for label in order:
            checkout = checkouts[label]
            results: dict[str, dict[str, Any] | None] = {}
            script_seconds[label] = {}
            for bench in BENCHES:
                log = logs / f"r{index + 1}_{label}_{bench.script}.log"
                results[bench.script], seconds = run_bench(
                    checkout, bench, args.quiet_timeout, log, lean=not args.full
                )
                script_seconds[label][bench.script] = round(seconds, 1)
                print(f"    {label} {bench.script}: {seconds:.0f} s", flush=True)
            for figure in FIGURES:
                figures = results[figure.bench]
                value = None if figures is None else dig(figures, figure.path)
                load = None if figures is None else dig(figures, figure.foreign)
                values[figure.key][label].append(value)
                foreign[figure.key][label].append(load)
                print(
                    f"    {label} {figure.key}: {fmt(value)} {figure.unit} "
                    f"(foreign load {fmt(load)} cores)",
                    flush=True,
                )
        seconds = time.perf_counter() - started
        rounds.append(
            {
                "round": index + 1,
                "order": order,
                "seconds": round(seconds, 1),
                "script_seconds": script_seconds,
            }
        )
        print(f"==> round {index + 1} took {seconds / 60:.1f} min", flush=True)

    report: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": sys.version.split()[0], "cpus": os.cpu_count()},
        "runs": args.runs,
        "limit_new_over_old": LIMIT,
        "quiet_timeout": (
            "scripts' own (900 s)"
            if args.quiet_timeout is None
            else f"capped at {args.quiet_timeout:g} s"
        ),
        "benches": [
            {"script": b.script, "args": list(b.args), "env": dict(b.env)} for b in BENCHES
        ],
        "logs": str(logs),
        "rounds": rounds,
        "figures": summarise(values, foreign),
        **{
            label: {
                "rev": c.rev,
                "sha": c.sha,
                "short": c.short,
                "checkout": str(c.root),
                "layout": "package" if c.packaged else "flat (pre-package)",
            }
            for label, c in checkouts.items()
        },
    }
    table = markdown(report)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    name = f"compare_{checkouts['old'].short}_{checkouts['new'].short}"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(table)
    print()
    print(table)
    print(f"written: {out / name}.json, {out / name}.md")
    missing = any(
        v is None for item in report["figures"].values() for v in item["old"] + item["new"]
    )
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
