"""The systemd units and the Procfile `make prod-local` runs: valid, and the same processes.

PID 1 here is not systemd, so the units cannot run here; `systemd-analyze verify` checks them
offline (syntax, known keys, executables that exist at the rendered paths), and the comparison
with the Procfile holds them to the command lines the prod-local tests do run.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.render import Topology, render_tree
from deploy.render import main as render_main

SERVICES = ("api", "worker", "callbacks", "beat", "flower", "analysis")


@dataclass(frozen=True)
class Launch:
    """What starts a process: its directory, the variables set for it alone, its argv."""

    cwd: str
    env: dict[str, str]
    argv: list[str]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    env_file = out / "yousync.env"
    env_file.write_text("ENVIRONMENT=prod\n")
    topology = Topology(run_dir=out, env_file=env_file, user="yousync")
    render_tree(out, topology.values())
    return out


def unit_launch(path: Path) -> Launch:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    service = parser["Service"]
    env = dict(item.split("=", 1) for item in shlex.split(service.get("Environment", "")))
    # systemd writes a literal % as %%; the program sees one.
    argv = [word.replace("%%", "%") for word in shlex.split(service["ExecStart"])]
    return Launch(cwd=service["WorkingDirectory"], env=env, argv=argv)


def procfile_launches(path: Path) -> dict[str, Launch]:
    """`name: [cd DIR && ][VAR=value ...] exec argv` lines, the shape Procfile.prod keeps."""
    launches = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        words = shlex.split(command)
        cwd = ""
        if words[:1] == ["cd"]:
            cwd, words = words[1], words[3:]  # cd DIR &&
        env = {}
        while words and "=" in words[0]:
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        assert words[0] == "exec", f"{name}: {command}"
        launches[name.strip()] = Launch(cwd=cwd, env=env, argv=words[1:])
    return launches


def test_units_when_rendered_for_this_checkout_then_systemd_analyze_verify_passes_silently(
    rendered: Path,
) -> None:
    units = sorted((rendered / "systemd").glob("yousync*"))
    assert [u.name for u in units] == sorted(
        [f"yousync-{name}.service" for name in SERVICES] + ["yousync.target"]
    )
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze missing: scripts/ensure_system_deps.sh deploy installs it"
    result = subprocess.run(
        [tool, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys and bad values are only warnings (exit 0): any output is a finding.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


def test_systemd_analyze_when_a_unit_is_broken_then_the_check_reports_it(
    rendered: Path, tmp_path: Path
) -> None:
    """The check above can fail: a unit whose executable is missing does not pass."""
    broken = tmp_path / "yousync-api.service"
    text = (rendered / "systemd" / "yousync-api.service").read_text()
    broken.write_text(text.replace("/uvicorn ", "/no-such-uvicorn ", 1))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "no-such-uvicorn" in result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_unit_and_procfile_when_rendered_then_start_the_same_command_in_the_same_place(
    rendered: Path, service: str
) -> None:
    unit = unit_launch(rendered / "systemd" / f"yousync-{service}.service")
    procfile = procfile_launches(rendered / "Procfile.prod")[service]
    assert procfile.argv == unit.argv
    assert procfile.cwd == unit.cwd
    # The unit may set more (PYTHONUNBUFFERED); what the Procfile sets, the unit sets alike.
    assert procfile.env.items() <= unit.env.items()


def test_units_when_rendered_then_every_one_reads_the_settings_file_as_the_service_user(
    rendered: Path,
) -> None:
    for service in SERVICES:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.read(rendered / "systemd" / f"yousync-{service}.service")
        assert parser["Service"]["EnvironmentFile"] == str(rendered / "yousync.env")
        assert parser["Service"]["User"] == "yousync"
        assert parser["Service"]["NoNewPrivileges"] == "yes"


def test_api_unit_when_reloaded_then_uvicorn_gets_sighup_for_a_rolling_restart(
    rendered: Path,
) -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(rendered / "systemd" / "yousync-api.service")
    assert parser["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert parser["Service"]["KillMode"] == "mixed"


def test_api_unit_when_rendered_then_its_metrics_directory_is_the_one_systemd_empties_at_start(
    rendered: Path,
) -> None:
    """prometheus-client's multiprocess directory must be empty when uvicorn's supervisor
    starts (stale files would count again): the unit's RuntimeDirectory=, which systemd creates
    empty at every start. Only the API has it: a worker would write its files there too."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(rendered / "systemd" / "yousync-api.service")
    api = unit_launch(rendered / "systemd" / "yousync-api.service")
    runtime = parser["Service"]["RuntimeDirectory"]
    assert api.env["PROMETHEUS_MULTIPROC_DIR"] == f"/run/{runtime}"
    for service in SERVICES:
        if service != "api":
            unit = unit_launch(rendered / "systemd" / f"yousync-{service}.service")
            assert "PROMETHEUS_MULTIPROC_DIR" not in unit.env, service
    assert "PROMETHEUS_MULTIPROC_DIR" not in (rendered / "yousync.env").read_text()


def test_render_cli_when_home_is_set_then_every_unit_runs_from_that_checkout(
    tmp_path: Path,
) -> None:
    """A host renders for its own checkout: HOME moves the executables and the working
    directories with it, none left pointing at the checkout that rendered them."""
    assert render_main([str(tmp_path), "--set", "HOME=/opt/yousync"]) == 0
    for service in SERVICES:
        launch = unit_launch(tmp_path / "systemd" / f"yousync-{service}.service")
        assert launch.argv[0].startswith("/opt/yousync/.venv/bin/"), launch.argv
        assert launch.cwd.startswith("/opt/yousync/"), launch.cwd
