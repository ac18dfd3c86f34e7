"""Starting ffprobe and ffmpeg on untrusted input: forced demuxer, `file` protocol only, only
the rule's decoders, resource limits on the child, and error text cleaned of host paths.

The address-space limit (RLIMIT_AS) is what stops a decoder that allocates without bound, which
no amount of argument checking can rule out in a C library. Debian's ffmpeg maps ≈ 300 MB of
shared libraries before it reads a byte, so the limit must leave room for that (512 MB was
enough for every format we accept, by measurement; the default is 1 GB). The CPU-time limit
(RLIMIT_CPU, the timeout in seconds) kills a child that spins even where no wall clock watches.
Both are set by util-linux's `prlimit` before it execs the tool.
"""

from __future__ import annotations

import math
import re
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from media_guard.errors import DECODER_UNAVAILABLE, TIMEOUT, UNDECODABLE, MediaError
from media_guard.formats import FormatRule

MB = 1024 * 1024
DEFAULT_ADDRESS_SPACE_BYTES = 1024 * MB
PRLIMIT = "prlimit"
_ABSOLUTE_PATH = re.compile(r"(?<![\w:])/(?:[\w.@+\-]+/)*[\w.@+\-]*")
# ffmpeg's stderr is kept up to this much, from its end (where the reason for failing is).
STDERR_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class ToolLimits:
    """Bounds on one ffmpeg/ffprobe child: wall-clock (and CPU) seconds and address space."""

    timeout_seconds: float = 600.0
    address_space_bytes: int = DEFAULT_ADDRESS_SPACE_BYTES


def input_args(rule: FormatRule, path: Path, *, max_seconds: float | None = None) -> list[str]:
    """The input half of a command line: no protocol but `file`, no decoder but the rule's,
    the demuxer forced, and at most `max_seconds` of the input read (`-t` before `-i` limits
    every output at once)."""
    limit = [] if max_seconds is None else ["-t", f"{max_seconds:.3f}"]
    allowed = ["-protocol_whitelist", "file", "-codec_whitelist", rule.decoders, *rule.options]
    return [*allowed, *limit, "-f", rule.demuxer, "-i", str(path)]


def clean_detail(text: str, path: Path | None = None) -> str:
    """The last meaningful line of ffmpeg's stderr, with the input named `<input>` and any
    other absolute path replaced, so no message shows where files live on the host."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else "no detail"
    if path is not None:
        line = line.replace(str(path), "<input>")
    return _ABSOLUTE_PATH.sub("<path>", line)[:300]


def unreadable(stderr: bytes, path: Path, *, doing: str = "read") -> MediaError:
    """The refusal for a tool that exited non-zero on `path`: its last words, without paths."""
    detail = clean_detail(stderr.decode(errors="replace"), path)
    return MediaError(UNDECODABLE, f"The file could not be {doing} as audio: {detail}")


def _within_hard_limit(kind: int, wanted: int) -> int:
    """A process may lower its limits, never raise them past its own hard limit."""
    hard = resource.getrlimit(kind)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def limited(args: list[str], limits: ToolLimits) -> list[str]:
    """`args` run by `prlimit`, which sets the child's address-space and CPU-time limits and
    then execs it: no Python runs between fork and exec (a `preexec_fn` would, which is unsafe
    from the threads both processes decode in)."""
    memory = _within_hard_limit(resource.RLIMIT_AS, limits.address_space_bytes)
    cpu = _within_hard_limit(resource.RLIMIT_CPU, max(1, math.ceil(limits.timeout_seconds)))
    return [PRLIMIT, f"--as={memory}", f"--cpu={cpu}", "--", *args]


def spawn_tool(
    args: list[str], *, limits: ToolLimits, stdout: int | None, stderr: int | IO[Any] | None
) -> subprocess.Popen[bytes]:
    """Start ffmpeg/ffprobe under the limits; a missing binary (or prlimit) is the host's
    fault, so a retryable `decoder_unavailable`."""
    missing = [tool for tool in (PRLIMIT, args[0]) if shutil.which(tool) is None]
    if missing:
        raise MediaError(DECODER_UNAVAILABLE, f"{' and '.join(missing)} not installed")
    try:
        return subprocess.Popen(
            limited(args, limits), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
    except OSError as exc:
        raise MediaError(DECODER_UNAVAILABLE, f"{args[0]} could not be started") from exc


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
