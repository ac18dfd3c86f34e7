"""Upload latency for one client at a time: time from request start to the 202, for 1 MB and
50 MB WAV files, and the time to `completed` end to end (one worker, fast analysis), for each
UPLOAD_STAGING mode: `spool` (the file on the API's disk) and `s3` (streamed to moto's S3 on
loopback as it arrives, 202 once the object is complete).

Both modes are measured in one run, against one API each sharing Redis, S3 and the worker,
alternating round by round: the s3/spool ratio is the median of per-round ratios, so the
machine's drifting load (it is shared) lands on both modes alike. Every upload differs by a few
bytes, so none is answered from an identical earlier upload.

Run by `make bench`, or alone from the repository root: .venv/bin/python -m
bench.bench_upload_latency [--staging spool,s3]  (BENCH_RUNS=20 1 MB rounds, BENCH_RUNS_LARGE
50 MB rounds, default 2/5 of BENCH_RUNS).
"""

from __future__ import annotations

import io
import os
import statistics
import time
import wave
from pathlib import Path
from typing import Any

import httpx

from bench._stack import (
    ForeignLoad,
    Row,
    command_for,
    parse_staging,
    percentile,
    running_stack,
    wait_for_quiet,
    write_result,
)
from bench.summary import write_summary


def wav_of_size(megabytes: float) -> bytes:
    """Noise-like 16-bit mono PCM at 44.1 kHz; compressible enough to look like speech to FLAC."""
    frames = int(megabytes * 1024 * 1024 / 2)
    pcm = bytes((i * 7919 + (i >> 7)) & 0xFF for i in range(65536)) * (frames * 2 // 65536 + 1)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(44100)
        out.writeframes(pcm[: frames * 2])
    return buffer.getvalue()


def unique(payload: bytes, index: int) -> bytes:
    """The same WAV with its last 8 bytes of PCM set from `index`: the API answers an identical
    upload of the same token from the earlier result at once, which is not what we measure."""
    return payload[:-8] + index.to_bytes(8, "little")


def summarize(to_202: list[float], to_completed: list[float], size: int) -> dict[str, Any]:
    return {
        "runs": len(to_202),
        "bytes": size,
        "to_202_ms_p50": round(percentile(to_202, 50) * 1000, 1),
        "to_202_ms_max": round(max(to_202) * 1000, 1),
        "to_completed_s_p50": round(percentile(to_completed, 50), 2),
        "to_completed_s_max": round(max(to_completed), 2),
    }


def measure(
    client: httpx.Client, bases: dict[str, str], payload: bytes, runs: int
) -> dict[str, dict[str, Any]]:
    """`runs` rounds; each uploads once to every API (staging mode), the order alternating
    from round to round, so a slow stretch of the machine lands on every mode alike. Each
    upload waits for its job to complete before the next starts (one worker). Returns each
    mode's figures, and with both modes the s3/spool ratios under "s3_vs_spool"."""
    modes = list(bases)
    to_202: dict[str, list[float]] = {mode: [] for mode in modes}
    to_completed: dict[str, list[float]] = {mode: [] for mode in modes}
    for index in range(runs):
        for mode in modes if index % 2 == 0 else modes[::-1]:
            body = unique(payload, index * len(modes) + modes.index(mode))
            started = time.perf_counter()
            response = client.post(
                f"{bases[mode]}/tokens/bench/upload-audio",
                files={"file": (f"b{index}.wav", body)},
            )
            to_202[mode].append(time.perf_counter() - started)
            assert response.status_code == 202, response.text
            result_url = f"{bases[mode]}{response.json()['result_url']}?wait=60"
            result = client.get(result_url, timeout=70).json()
            to_completed[mode].append(time.perf_counter() - started)
            assert result["status"] == "completed", result
    figures = {mode: summarize(to_202[mode], to_completed[mode], len(payload)) for mode in modes}
    if {"spool", "s3"} <= set(modes):
        figures["s3_vs_spool"] = {
            # Per-round ratios: both uploads of a round saw the same state of the machine.
            "to_202_ratio": round(
                statistics.median(
                    s3 / spool for s3, spool in zip(to_202["s3"], to_202["spool"], strict=True)
                ),
                2,
            ),
            "to_202_ratio_of_p50": round(
                figures["s3"]["to_202_ms_p50"] / figures["spool"]["to_202_ms_p50"], 2
            ),
            "to_completed_ratio": round(
                statistics.median(
                    s3 / spool
                    for s3, spool in zip(to_completed["s3"], to_completed["spool"], strict=True)
                ),
                2,
            ),
        }
    return figures


def key(mode: str, size: str) -> str:
    """Figures of the default staging (spool) keep their old names ("1MB"), so earlier
    results and bench/compare_commits.py read them as before; s3's are "s3_1MB"."""
    return size if mode == "spool" else f"{mode}_{size}"


def table(figures: dict[str, Any]) -> list[Row]:
    cmd = command_for(Path(__file__).name)
    rows = []
    for size, label in (("1MB", "1 MB"), ("50MB", "50 MB")):
        for mode in figures["staging"]:
            result = figures[key(mode, size)]
            rows.append(
                Row(
                    f"One client, {label} WAV, UPLOAD_STAGING={mode} ({result['runs']} runs, "
                    "1 worker): request → 202 p50 / max; → completed p50 / max",
                    f"{result['to_202_ms_p50']:.0f} / {result['to_202_ms_max']:.0f} ms; "
                    f"{result['to_completed_s_p50']:.2f} / {result['to_completed_s_max']:.2f} s",
                    "",
                    None,
                    cmd,
                )
            )
        ratios = figures.get("s3_vs_spool", {}).get(size)
        if ratios:
            rows.append(
                Row(
                    f"… {label}: s3 / spool, time to 202 (median of per-round ratios, modes "
                    "alternating round by round; ratio of p50s); → completed",
                    f"{ratios['to_202_ratio']:.2f}× ({ratios['to_202_ratio_of_p50']:.2f}×); "
                    f"{ratios['to_completed_ratio']:.2f}×",
                    "",
                    None,
                    cmd,
                )
            )
    return rows


def main() -> None:
    modes = parse_staging(__doc__)
    runs_small = int(os.environ.get("BENCH_RUNS", "20"))
    # 8 by default: the s3/spool ratio is a median of per-round ratios, 4 rounds made it jumpy.
    runs_large = int(os.environ.get("BENCH_RUNS_LARGE", str(max(3, runs_small * 2 // 5))))
    figures: dict[str, Any] = {
        "analysis_min_seconds": 0.0,
        "staging": list(modes),
        "background_cpu_cores": wait_for_quiet(),
    }
    with running_stack(workers=1, staging=modes) as stack, httpx.Client(timeout=120) as client:
        bases = {mode: stack.url(mode) for mode in modes}
        for index, base in enumerate(bases.values()):
            # Warm-up: the worker's first import of pydub/ffmpeg, each API's first S3 call.
            client.post(
                f"{base}/tokens/bench/upload-audio",
                files={"file": ("w.wav", unique(wav_of_size(0.1), 10_000 + index))},
            )
        time.sleep(2)
        foreign = ForeignLoad()
        ratios = {}
        for size, megabytes, runs in (("1MB", 1, runs_small), ("50MB", 50, runs_large)):
            measured = measure(client, bases, wav_of_size(megabytes), runs)
            if "s3_vs_spool" in measured:
                ratios[size] = measured.pop("s3_vs_spool")
            for mode, result in measured.items():
                figures[key(mode, size)] = result
            print(size, measured, ratios.get(size, ""), flush=True)
        if ratios:
            figures["s3_vs_spool"] = ratios
        figures["foreign_cpu_cores"] = foreign.cores()
    path = write_result("upload_latency", figures, table(figures))
    print(path.read_text())
    write_summary()


if __name__ == "__main__":
    main()
