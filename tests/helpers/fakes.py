"""Stand-ins for the pipeline's seams — the object store (yousync.core.storage.ObjectStore), the
analysis server (yousync.worker.analysis_client.Analyzer) and the audio preparation
(yousync.worker.audio.prepare) — shared by the pipeline's tests and bench/bench_pipeline.py.

They do no I/O beyond the prepared file, report progress the way the real ones do (fractions
0–1 that never go back), and record what they were asked, in order, for the tests to check.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from yousync.core.errors import PermanentError
from yousync.worker.audio import PreparedAudio

ANALYSIS_RESULT: dict[str, Any] = {"duration_ms": 1000, "loudness_dbfs": -20.0, "sync_score": None}


class FakeObjectStore:
    """S3 stand-in: keeps the size of each stored object; reports `progress_steps` byte-progress
    fractions per upload. While an upload runs its key is an unfinished multipart upload
    (`multipart`): an exception out of `on_progress` or `during_upload` (a refused progress
    write, an outage) leaves it there, as a cut-off upload that could not abort would."""

    bucket = "fake"

    def __init__(
        self,
        *,
        progress_steps: int = 10,
        during_upload: Callable[[float], None] | None = None,
    ) -> None:
        self.progress_steps = progress_steps
        # Called with each fraction before it is reported (a test cancels or fails from here).
        self.during_upload = during_upload
        self.objects: dict[str, int] = {}
        # Staged uploads (`incoming/<job>`), with their bytes: what `download` fetches.
        self.staged: dict[str, bytes] = {}
        self.multipart: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def size_of(self, key: str) -> int | None:
        self.calls.append(("size_of", key))
        return self.objects.get(key)

    def upload(
        self, path: Path, key: str, *, content_type: str, on_progress: Callable[[float], None]
    ) -> int:
        self.calls.append(("upload", key))
        size = path.stat().st_size
        self.multipart.add(key)
        for step in range(1, self.progress_steps + 1):
            fraction = step / self.progress_steps
            if self.during_upload is not None:
                self.during_upload(fraction)
            on_progress(fraction)
        self.multipart.discard(key)
        self.objects[key] = size
        return size

    def download(self, key: str, path: Path) -> int:
        self.calls.append(("download", key))
        if key not in self.staged:
            raise PermanentError("upload_gone", "The uploaded file is no longer available")
        path.write_bytes(self.staged[key])
        return len(self.staged[key])

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        self.objects.pop(key, None)
        self.staged.pop(key, None)

    def abort_multipart_uploads(self, key: str) -> int:
        self.calls.append(("abort_multipart_uploads", key))
        if key in self.multipart:
            self.multipart.discard(key)
            return 1
        return 0

    def delete_under(self, prefix: str) -> list[str]:
        self.calls.append(("delete_under", prefix))
        touched = sorted(
            key for key in {*self.objects, *self.staged, *self.multipart} if key.startswith(prefix)
        )
        for key in touched:
            self.objects.pop(key, None)
            self.staged.pop(key, None)
            self.multipart.discard(key)
        return touched

    def operations(self) -> list[str]:
        """The calls' names, in order (`size_of` left out: a lookup changes nothing)."""
        return [name for name, _ in self.calls if name != "size_of"]


class FakeAnalyzer:
    """Analysis-server stand-in: `progress_steps` NDJSON-like progress lines, then `result`.
    `during_analysis` is called with each fraction before it is reported."""

    def __init__(
        self,
        *,
        progress_steps: int = 20,
        result: dict[str, Any] | None = None,
        during_analysis: Callable[[float], None] | None = None,
    ) -> None:
        self.progress_steps = progress_steps
        self.result = dict(ANALYSIS_RESULT if result is None else result)
        self.during_analysis = during_analysis
        self.payloads: list[dict[str, str]] = []

    def analyze(
        self, payload: dict[str, str], *, on_progress: Callable[[float, str], None]
    ) -> dict[str, Any]:
        self.payloads.append(dict(payload))
        for step in range(1, self.progress_steps + 1):
            fraction = step / self.progress_steps
            if self.during_analysis is not None:
                self.during_analysis(fraction)
            on_progress(fraction, "features")
        return dict(self.result)


class FakePreparer:
    """Stands in for `yousync.worker.audio.prepare` (patch it there): writes a tiny "FLAC" file
    next to `dest`, as the real one names its output, and describes it; `sources` records each
    decode asked for."""

    content = b"fLaC"

    def __init__(self) -> None:
        self.sources: list[Path] = []

    def __call__(self, source: Path, *, dest: Path, **_: Any) -> PreparedAudio:
        self.sources.append(source)
        target = dest.with_name(f"{dest.name}.flac")
        target.write_bytes(self.content)
        return PreparedAudio(
            path=target,
            extension="flac",
            content_type="audio/flac",
            size=len(self.content),
            duration_ms=1000,
            sample_rate=44100,
            channels=1,
            method="pydub",
        )
