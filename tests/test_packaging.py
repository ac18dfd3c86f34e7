"""The repository's three distributions build as wheels that carry what they need at run time
(the job-write Lua script, the progress page, type information), and declare the extras the
README documents. `--no-deps`: the wheels themselves, not PyPI's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Builds in isolated environments, which pip fills from the package index.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheels")
    # Built from copies: setuptools writes build/ and *.egg-info into the project directory.
    sources = tmp_path_factory.mktemp("sources")
    skip = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    for name in ("back-end", "analysis-server", "media-guard"):
        shutil.copytree(REPO / name, sources / name, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out)]
        + [str(sources / name) for name in ("back-end", "analysis-server", "media-guard")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    found = {path.name.split("-")[0]: zipfile.ZipFile(path) for path in out.glob("*.whl")}
    assert set(found) == {"yousync_backend", "yousync_analysis_server", "yousync_media_guard"}
    return found


def metadata(wheel: zipfile.ZipFile) -> list[tuple[str, str]]:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return Parser().parsestr(wheel.read(name).decode()).items()


def test_backend_wheel_when_built_then_carries_lua_page_and_types(
    wheels: dict[str, zipfile.ZipFile],
) -> None:
    names = set(wheels["yousync_backend"].namelist())

    assert "yousync/core/job_write.lua" in names
    assert {f"yousync/api/static/{f}" for f in ("index.html", "progress.js", "i18n.js")} <= names
    assert "yousync/py.typed" in names
    for package in ("core", "api", "worker", "observability"):
        assert f"yousync/{package}/__init__.py" in names
    # Only the package: no tests, no top-level modules that could collide on sys.path.
    assert {name.split("/")[0] for name in names} == {"yousync", "yousync_backend-0.2.0.dist-info"}


def test_backend_wheel_when_read_then_declares_the_process_extras(
    wheels: dict[str, zipfile.ZipFile],
) -> None:
    fields = metadata(wheels["yousync_backend"])
    extras = {value for key, value in fields if key == "Provides-Extra"}
    requires = [value for key, value in fields if key == "Requires-Dist"]

    assert {"api", "worker", "flower", "test", "dev"} <= extras
    assert any(r.startswith("fastapi") and 'extra == "api"' in r for r in requires)
    assert any(r.startswith("pydub") and 'extra == "worker"' in r for r in requires)
    # The shared core needs neither web framework nor audio decoding.
    base = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith(("fastapi", "pydub", "uvicorn")) for r in base), base


def test_analysis_server_wheel_when_built_then_holds_only_its_package(
    wheels: dict[str, zipfile.ZipFile],
) -> None:
    names = wheels["yousync_analysis_server"].namelist()

    assert "analysis_server/app.py" in names
    assert {name.split("/")[0] for name in names} == {
        "analysis_server",
        "yousync_analysis_server-0.2.0.dist-info",
    }
