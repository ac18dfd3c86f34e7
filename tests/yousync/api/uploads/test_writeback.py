"""start_writeback against the real kernel: it must reach sync_file_range(2) on Linux, and a
refusal must come back as False, never as an exception in the upload's write thread."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from yousync.api.uploads.writeback import start_writeback

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range")


@linux_only
def test_start_writeback_when_range_was_written_then_kernel_takes_it_and_bytes_are_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool"
    data = os.urandom(3 * 1024 * 1024)
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        assert start_writeback(handle.fileno(), 0, len(data)) is True
    assert path.read_bytes() == data


@linux_only
def test_start_writeback_when_the_kernel_refuses_then_false_not_an_error() -> None:
    read_end, write_end = os.pipe()  # a pipe is not a file: sync_file_range answers ESPIPE
    try:
        assert start_writeback(read_end, 0, 4096) is False
        assert start_writeback(-1, 0, 4096) is False  # EBADF
    finally:
        os.close(read_end)
        os.close(write_end)


def test_start_writeback_when_range_is_empty_then_nothing_is_asked(tmp_path: Path) -> None:
    with (tmp_path / "spool").open("wb") as handle:
        assert start_writeback(handle.fileno(), 0, 0) is False
