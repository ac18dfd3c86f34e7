"""`make prod-local`'s preparation: the API's metrics directory, emptied before honcho starts
(what systemd's RuntimeDirectory= does for the unit), given to the API alone."""

from __future__ import annotations

import shlex
from pathlib import Path

from devtools import prod_local


def test_prepare_when_run_again_then_the_api_metrics_directory_is_empty_and_the_apis_alone(
    tmp_path: Path,
) -> None:
    stale = prod_local.api_metrics_dir(tmp_path) / "gauge_livesum_4242.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from the previous run")

    procfile, env = prod_local.prepare(tmp_path, prod_local.Ports(), 2)

    assert stale.parent.is_dir() and not list(stale.parent.iterdir())
    assert "PROMETHEUS_MULTIPROC_DIR" not in env  # honcho's environment is every process's
    lines = dict(
        line.split(":", 1) for line in procfile.read_text().splitlines() if line[:1].isalpha()
    )
    set_by = {
        name
        for name, command in lines.items()
        if any(word.startswith("PROMETHEUS_MULTIPROC_DIR=") for word in shlex.split(command))
    }
    assert set_by == {"api"}
    assert f"PROMETHEUS_MULTIPROC_DIR={stale.parent}" in shlex.split(lines["api"])
