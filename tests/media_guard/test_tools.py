"""Children started under the address-space limit, and error text without host paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from media_guard.errors import DECODER_UNAVAILABLE, TIMEOUT, MediaError
from media_guard.formats import RULES
from media_guard.tools import ToolLimits, clean_detail, input_args, run_tool


def test_run_tool_when_started_then_child_has_the_address_space_and_cpu_limits() -> None:
    limits = ToolLimits(address_space_bytes=640 * 1024 * 1024, timeout_seconds=42.5)

    result = run_tool(["sh", "-c", "ulimit -v; ulimit -t"], limits=limits)

    # ulimit -v counts KiB; the CPU limit is the timeout, rounded up.
    assert result.stdout.decode().split() == [str(640 * 1024), "43"]


def test_run_tool_when_the_process_hard_limit_is_lower_then_that_limit_not_an_error() -> None:
    # A worker started under a lower hard limit (a container's) cannot raise it for a child.
    code = (
        "from media_guard.tools import ToolLimits, run_tool;"
        "print(run_tool(['sh', '-c', 'ulimit -v'], limits=ToolLimits()).stdout.decode())"
    )
    result = subprocess.run(
        ["prlimit", f"--as={900 * 1024 * 1024}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(900 * 1024)]


def test_run_tool_when_child_outlives_its_timeout_then_killed_and_decode_timeout() -> None:
    with pytest.raises(MediaError) as refused:
        run_tool(["sleep", "30"], limits=ToolLimits(timeout_seconds=0.2))

    assert refused.value.code == TIMEOUT


def test_run_tool_when_binary_missing_then_retryable_decoder_unavailable() -> None:
    with pytest.raises(MediaError) as refused:
        run_tool(["no-such-ffmpeg-here"], limits=ToolLimits())

    assert refused.value.code == DECODER_UNAVAILABLE
    assert refused.value.retryable


def test_input_args_when_built_then_format_forced_and_only_the_file_protocol() -> None:
    args = input_args(RULES["m4a"], Path("/spool/job"), max_seconds=601)

    assert args[:2] == ["-protocol_whitelist", "file"]
    assert args[args.index("-f") + 1] == "mov"
    assert args[args.index("-enable_drefs") + 1] == "0"
    assert args[args.index("-t") + 1] == "601.000"
    assert args.index("-t") < args.index("-i"), "-t before -i bounds the input"
    assert args[-2:] == ["-i", "/spool/job"]


def test_input_args_when_ffmpeg_meets_another_protocol_then_it_refuses() -> None:
    # The whitelist is ffmpeg's to enforce: any input but a plain file is refused outright.
    args = input_args(RULES["wav"], Path("pipe:0"))
    result = subprocess.run(
        ["ffmpeg", "-v", "error", *args, "-f", "null", "-"],
        capture_output=True,
        timeout=30,
    )

    assert result.returncode != 0
    assert b"not on whitelist" in result.stderr


@pytest.mark.parametrize(
    "text",
    [
        "/var/lib/yousync/spool/4f1c: Invalid data found when processing input",
        "[concat @ 0x55] Impossible to open '/home/user/other.wav'\n/srv/x: End of file",
    ],
)
def test_clean_detail_when_ffmpeg_names_paths_then_none_survive(text: str) -> None:
    cleaned = clean_detail(text, Path("/var/lib/yousync/spool/4f1c"))

    assert "/" not in cleaned.replace("<path>", "").replace("<input>", "")
    assert cleaned.endswith(("processing input", "End of file"))
