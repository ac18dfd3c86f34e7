"""Starting ffprobe and ffmpeg on untrusted input: forced demuxer, `file` protocol only, an
address-space limit on the child, and error text cleaned of host paths.

The address-space limit (RLIMIT_AS) is what stops a decoder that allocates without bound, which
no amount of argument checking can rule out in a C library. Debian's ffmpeg maps ≈ 300 MB of
shared libraries before it reads a byte, so the limit must leave room for that (512 MB was
enough for every format we accept, by measurement; the default is 1 GB).
"""

from __future__ import annotations

import re
import resource
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from media_guard.errors import DECODER_UNAVAILABLE, TIMEOUT, MediaError
from media_guard.formats import FormatRule

MB = 1024 * 1024
DEFAULT_ADDRESS_SPACE_BYTES = 1024 * MB
_ABSOLUTE_PATH = re.compile(r"(?<![\w:])/(?:[\w.@+\-]+/)*[\w.@+\-]*")


@dataclass(frozen=True)
class ToolLimits:
    """Bounds on one ffmpeg/ffprobe child: wall-clock seconds and address space."""

    timeout_seconds: float = 600.0
    address_space_bytes: int = DEFAULT_ADDRESS_SPACE_BYTES


def input_args(rule: FormatRule, path: Path, *, max_seconds: float | None = None) -> list[str]:
    """The input half of a command line: no protocol but `file`, the demuxer forced, and at
    most `max_seconds` of the input read (`-t` before `-i` limits every output at once)."""
    limit = [] if max_seconds is None else ["-t", f"{max_seconds:.3f}"]
    return [
        "-protocol_whitelist",
        "file",
        *rule.options,
        *limit,
        "-f",
        rule.demuxer,
        "-i",
        str(path),
    ]


def clean_detail(text: str, path: Path | None = None) -> str:
    """The last meaningful line of ffmpeg's stderr, with the input named `<input>` and any
    other absolute path replaced, so no message shows where files live on the host."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else "no detail"
    if path is not None:
        line = line.replace(str(path), "<input>")
    return _ABSOLUTE_PATH.sub("<path>", line)[:300]


def _limit_address_space(limit: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec: setrlimit only
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def spawn_tool(
    args: list[str], *, limits: ToolLimits, stdout: int | None, stderr: int | IO[Any] | None
) -> subprocess.Popen[bytes]:
    """Start ffmpeg/ffprobe under the address-space limit; a missing binary is the host's
    fault, so a retryable `decoder_unavailable`."""
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=_limit_address_space(limits.address_space_bytes),
        )
    except FileNotFoundError as exc:
        raise MediaError(DECODER_UNAVAILABLE, f"{args[0]} is not installed") from exc


def run_tool(args: list[str], *, limits: ToolLimits) -> subprocess.CompletedProcess[bytes]:
    """Run a short ffprobe/ffmpeg command to the end, output captured, under `limits`."""
    process = spawn_tool(args, limits=limits, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=limits.timeout_seconds)
    except subprocess.TimeoutExpired as exc:
        process.kill()
        process.communicate()
        raise MediaError(
            TIMEOUT, f"{args[0]} did not finish within {limits.timeout_seconds:.0f} s"
        ) from exc
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
