"""Hostile uploads: what they cost the stack now that every upload is treated as hostile media.

1. **Queue delay.** One worker process (`--concurrency=1`, the worst case: everything waits its
   turn). A short job (3 s WAV) alone, then the same job submitted right behind six hostile
   files of one kind: 6-hour FLACs (45 KB) and 6-hour Ogg/Opus (8 MB), whose headers state their
   length, so the API answers 422 at once; 6-hour FLACs written to a pipe, whose length nothing
   states, so the worker refuses each after decoding just past the limit; FLACs that declare 1 s
   and hold 10 minutes of 8 channels. The short job's extra wait is compared with the time one
   hostile file takes to be refused alone (upload → 422, or upload → `failed`). Before the
   hostile-media fixes, six 6-hour files made the short job wait 181.6 s instead of 1.2 s.
2. **Peak memory.** Growth of the peak RSS (VmHWM) of the worker's child and of the analysis
   server over one job each, both restarted before every input, for: the 23 KB FLAC declaring
   1 s with 10 min of 8 channels; the same honest about its length; a 6-hour FLAC; a 95 MB
   9-minute stereo WAV (≈ MAX_UPLOAD_MB, within the duration limit); a 10-minute MP3, whose
   length only the decode can tell. Target for each: under 300 MB.

Inputs are made by ffmpeg (the 6-hour Opus takes about two minutes to encode and is kept in
var/bench-cache/ between runs).

Run: `make bench`, or alone from the repository root: .venv/bin/python -m
bench.bench_hostile_media (about 4 minutes, plus the Opus once).
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._stack import ForeignLoad, Row, command_for, running_stack, write_result
from bench.summary import write_summary
from tests.helpers import hostile_media, memory
from tests.helpers.audio import wav_bytes

SCRIPT = Path(__file__).name
CACHE = Path(__file__).resolve().parent.parent / "var" / "bench-cache"
ROUNDS = 3
KINDS = ("flac_6h", "opus_6h", "flac_6h_piped", "flac_lying_8ch")
MB = 1024 * 1024


def ffmpeg(out: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args, str(out)], check=True, timeout=600)
    return out


def inputs(tmp: Path) -> dict[str, bytes]:
    CACHE.mkdir(parents=True, exist_ok=True)
    opus = CACHE / "silence-6h.opus"
    if not opus.exists():
        ffmpeg(opus, "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "21600", "-b:a", "6k")
    tone = ["-f", "lavfi", "-i", "sine=f=220:r=44100:d=540", "-ac", "2"]
    return {
        "flac_6h": hostile_media.silent_flac(
            tmp / "6h.flac", seconds=21600, rate=8000
        ).read_bytes(),
        "opus_6h": opus.read_bytes(),
        "flac_6h_piped": hostile_media.piped_flac(21600),
        "flac_lying_8ch": hostile_media.lying_flac(tmp / "b.flac", declared=1, actual=600),
        "flac_honest_8ch_10min": hostile_media.silent_flac(
            tmp / "h.flac", seconds=600, channels=8
        ).read_bytes(),
        "wav_95mb_9min_stereo": ffmpeg(tmp / "big.wav", *tone).read_bytes(),
        "mp3_10min": ffmpeg(
            tmp / "long.mp3", "-f", "lavfi", "-i", "sine=f=220:d=600", "-b:a", "64k"
        ).read_bytes(),
    }


def submit(client: httpx.Client, api: str, token: str, body: bytes, name: str) -> str | None:
    """The job's result URL, or None when the API refused the upload with 422."""
    response = client.post(f"{api}/tokens/{token}/upload-audio", files={"file": (name, body)})
    if response.status_code == 422:
        return None
    if response.status_code != 202:
        raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
    return str(response.json()["result_url"])


def finish(client: httpx.Client, api: str, result_url: str) -> dict[str, Any]:
    """The job's final snapshot (the result endpoint waits at most 60 s per request)."""
    for _ in range(20):
        response = client.get(f"{api}{result_url}?wait=60", timeout=70)
        if response.status_code not in (200, 202):
            raise RuntimeError(f"result answered {response.status_code}: {response.text}")
        snapshot = dict(response.json())
        if snapshot["status"] in ("completed", "failed", "cancelled"):
            return snapshot
    raise RuntimeError(f"job still {snapshot['status']} after 20 minutes")


def outcome(client: httpx.Client, api: str, result_url: str | None) -> str:
    """How the upload ended: `422 at upload`, `completed` or the job's error code."""
    if result_url is None:
        return "422 at upload"
    done = finish(client, api, result_url)
    return str(done["status"] if done["status"] == "completed" else done["error"]["code"])


def job_seconds(client: httpx.Client, api: str, token: str, body: bytes, name: str) -> float:
    """Upload → the job's end (or the API's 422)."""
    started = time.perf_counter()
    outcome(client, api, submit(client, api, token, body, name))
    return time.perf_counter() - started


def queue_delay(files: dict[str, bytes]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with running_stack(workers=1) as bench, httpx.Client(timeout=120) as client:
        api = bench.api_url
        job_seconds(client, api, "warm", wav_bytes(3.0, freq=300), "warm.wav")
        foreign = ForeignLoad()
        alone = [
            job_seconds(client, api, f"u{r}", wav_bytes(3.0, freq=400 + r), "short.wav")
            for r in range(ROUNDS)
        ]
        figures["short_alone_s"] = round(statistics.median(alone), 3)
        for kind in KINDS:
            refusals = [
                job_seconds(client, api, f"r{kind}{r}", files[kind] + bytes([r]), "x.bin")
                for r in range(ROUNDS)
            ]
            behind = []
            for r in range(ROUNDS):
                ahead = [
                    submit(client, api, f"a{kind}{r}", files[kind] + bytes([r, n]), "x.bin")
                    for n in range(6)
                ]
                behind.append(
                    job_seconds(client, api, f"v{kind}{r}", wav_bytes(3.0, freq=500 + r), "s.wav")
                )
                outcomes = {outcome(client, api, url) for url in ahead}
                figures[f"{kind}_refused_as"] = sorted(outcomes)
            figures[f"{kind}_refusal_s"] = round(statistics.median(refusals), 3)
            figures[f"{kind}_short_behind_six_s"] = round(statistics.median(behind), 3)
            figures[f"{kind}_extra_wait_s"] = round(
                statistics.median(behind) - figures["short_alone_s"], 3
            )
        figures["foreign_cpu_cores"] = foreign.cores()
    return figures


def peak_growth(files: dict[str, bytes]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with running_stack(workers=1) as bench, httpx.Client(timeout=120) as client:
        worker, analysis = bench.procs["worker0"], bench.procs["analysis"]
        for index, (kind, body) in enumerate(files.items()):
            worker.restart()
            analysis.restart()
            assert worker.popen is not None and analysis.popen is not None
            # A first short job loads everything a job needs, so the baseline is a warm child.
            job_seconds(
                client, bench.api_url, f"w{index}", wav_bytes(1.0, freq=200 + index), "w.wav"
            )
            worker_before = memory.children_peaks(worker.popen.pid)
            analysis_before = {analysis.popen.pid: memory.peak_rss_bytes(analysis.popen.pid)}
            ended = outcome(
                client, bench.api_url, submit(client, bench.api_url, f"m{index}", body, "x")
            )
            worker_after = memory.children_peaks(worker.popen.pid)
            analysis_after = {analysis.popen.pid: memory.peak_rss_bytes(analysis.popen.pid)}
            figures[kind] = {
                "bytes": len(body),
                "outcome": ended,
                "worker_child_growth_mb": round(
                    memory.largest_growth(worker_before, worker_after) / MB, 1
                ),
                "analysis_server_growth_mb": round(
                    memory.largest_growth(analysis_before, analysis_after) / MB, 1
                ),
            }
    return figures


def table(delay: dict[str, Any], peaks: dict[str, Any]) -> list[Row]:
    command = command_for(SCRIPT)
    rows = [
        Row("short job alone (3 s WAV), 1 worker", f"{delay['short_alone_s']} s", command=command)
    ]
    for kind in KINDS:
        extra, refusal = delay[f"{kind}_extra_wait_s"], delay[f"{kind}_refusal_s"]
        rows.append(
            Row(
                f"extra wait of the short job behind six {kind}",
                f"{extra} s (one refusal alone: {refusal} s)",
                "≤ one refusal",
                extra <= refusal,
                command,
            )
        )
    for kind, figures in peaks.items():
        worst = max(figures["worker_child_growth_mb"], figures["analysis_server_growth_mb"])
        rows.append(
            Row(
                f"peak RSS growth, {kind} ({figures['outcome']})",
                f"worker child +{figures['worker_child_growth_mb']} MB, "
                f"analysis server +{figures['analysis_server_growth_mb']} MB",
                "< 300 MB",
                worst < 300,
                command,
            )
        )
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="yousync-hostile-") as tmp:
        files = inputs(Path(tmp))
        delay = queue_delay(files)
        peaks = peak_growth(files)
    figures = {"queue_delay": delay, "peak_growth": peaks, "rounds": ROUNDS}
    path = write_result("hostile_media", figures, table(delay, peaks))
    print(path.read_text())
    write_summary()


if __name__ == "__main__":
    main()
