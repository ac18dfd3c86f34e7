"""Upload latency for one client at a time: time from request start to the 202, for 1 MB and
50 MB WAV files, and the time to `completed` end to end (one worker, fast analysis). Every
upload differs by a few bytes, so none is answered from an identical earlier upload.
Run by `make bench`, or alone from the repository root: .venv/bin/python -m
bench.bench_upload_latency.
"""

from __future__ import annotations

import io
import os
import time
import wave
from pathlib import Path
from typing import Any

import httpx

from bench._stack import (
    ForeignLoad,
    Row,
    command_for,
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


def measure(client: httpx.Client, base: str, payload: bytes, runs: int) -> dict[str, Any]:
    to_202: list[float] = []
    to_completed: list[float] = []
    for index in range(runs):
        body = unique(payload, index)
        started = time.perf_counter()
        response = client.post(
            f"{base}/tokens/bench/upload-audio", files={"file": (f"b{index}.wav", body)}
        )
        to_202.append(time.perf_counter() - started)
        assert response.status_code == 202, response.text
        result = client.get(f"{base}{response.json()['result_url']}?wait=60", timeout=70).json()
        to_completed.append(time.perf_counter() - started)
        assert result["status"] == "completed", result
    return {
        "runs": runs,
        "bytes": len(payload),
        "to_202_ms_p50": round(percentile(to_202, 50) * 1000, 1),
        "to_202_ms_max": round(max(to_202) * 1000, 1),
        "to_completed_s_p50": round(percentile(to_completed, 50), 2),
        "to_completed_s_max": round(max(to_completed), 2),
    }


def table(figures: dict[str, Any]) -> list[Row]:
    cmd = command_for(Path(__file__).name)
    return [
        Row(
            f"One client, {label} WAV ({result['runs']} runs, 1 worker): request → 202 p50 / max;"
            " → completed p50 / max",
            f"{result['to_202_ms_p50']:.0f} / {result['to_202_ms_max']:.0f} ms; "
            f"{result['to_completed_s_p50']:.2f} / {result['to_completed_s_max']:.2f} s",
            "",
            None,
            cmd,
        )
        for label, result in ((label, figures[label]) for label in ("1MB", "50MB"))
    ]


def main() -> None:
    runs_small = int(os.environ.get("BENCH_RUNS", "20"))
    figures: dict[str, Any] = {
        "analysis_min_seconds": 0.0,
        "background_cpu_cores": wait_for_quiet(),
    }
    with running_stack(workers=1) as stack, httpx.Client(timeout=120) as client:
        client.post(  # warm-up: first import of pydub/ffmpeg in the worker
            f"{stack.api_url}/tokens/bench/upload-audio",
            files={"file": ("w.wav", wav_of_size(0.1))},
        )
        time.sleep(2)
        foreign = ForeignLoad()
        figures["1MB"] = measure(client, stack.api_url, wav_of_size(1), runs_small)
        figures["50MB"] = measure(client, stack.api_url, wav_of_size(50), max(3, runs_small // 5))
        figures["foreign_cpu_cores"] = foreign.cores()
    path = write_result("upload_latency", figures, table(figures))
    print(path.read_text())
    write_summary()


if __name__ == "__main__":
    main()
