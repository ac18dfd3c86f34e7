"""`make prod-local`: the production topology on one machine, with production settings.

nginx in front (the SSE and upload recipe of deploy/nginx), the API as N uvicorn processes, a
Celery worker with memory recycling, Beat under its lock, Flower under /flower, the analysis
server and a Redis configured as production needs it (persistence on, no eviction) — the same
command lines as the systemd units in deploy/systemd (tests/deploy/test_units.py compares them),
run under honcho instead of systemd because this machine has no systemd as PID 1. S3 is moto's
server: the one stand-in, since a real bucket needs real credentials.

Everything lives under one directory (default var/prod):
- `secrets.env`, made once with fresh random values (API key, stream-token secret, Flower
  password, analysis secret, S3 keys) and kept across runs, mode 0600;
- `yousync.env`, the settings file (ENVIRONMENT=prod, URLs and ports, plus the secrets): the
  file systemd's EnvironmentFile= would read, rewritten on every run from the options;
- `deploy/`, the templates rendered for this checkout and these ports; `nginx/`, `redis/`,
  `spool/`: the processes' state; `api-metrics/`: the API processes' metric files, emptied at
  every start.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deploy.render import Topology, current_user, render_tree, settings_from
from yousync.core.config import HOME_DIR
from yousync.observability.multiprocess import prepare_dir

SECRET_NAMES = (
    "API_KEYS",
    "STREAM_TOKEN_SECRET",
    "FLOWER_BASIC_AUTH",
    "ANALYSIS_SHARED_SECRET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


@dataclass(frozen=True)
class Ports:
    """Defaults clear of `make dev`'s (8000, 8001, 9000, 5555, 6379), so both can run."""

    proxy: int = 8080
    api: int = 8100
    analysis: int = 8101
    s3: int = 9100
    flower: int = 5655
    redis: int = 6390


def new_secrets() -> dict[str, str]:
    return {
        "API_KEYS": "ys_" + secrets.token_urlsafe(24),
        "STREAM_TOKEN_SECRET": secrets.token_urlsafe(32),
        "FLOWER_BASIC_AUTH": "ops:" + secrets.token_urlsafe(18),
        "ANALYSIS_SHARED_SECRET": secrets.token_urlsafe(32),
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
    }


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def write_env_file(path: Path, values: Mapping[str, str], header: str) -> None:
    """KEY=value lines, readable by systemd's EnvironmentFile= and by honcho alike (no quotes:
    nothing here contains spaces)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    body = "".join(f"{key}={value}\n" for key, value in values.items())
    path.write_text(f"# {header}\n{body}")


def ensure_secrets(run_dir: Path) -> dict[str, str]:
    """The secrets of this local deployment: made once, then reused, so a restart keeps the
    API key a client already has."""
    path = run_dir / "secrets.env"
    if path.exists():
        kept = read_env_file(path)
        if all(kept.get(name) for name in SECRET_NAMES):
            return {name: kept[name] for name in SECRET_NAMES}
    fresh = new_secrets()
    write_env_file(path, fresh, "made by `make prod-local` once; delete the file for new ones")
    return fresh


def settings_env(run_dir: Path, ports: Ports, secret_values: Mapping[str, str]) -> dict[str, str]:
    """The production settings file: ENVIRONMENT=prod, so config.py refuses any local dummy."""
    proxy = f"http://127.0.0.1:{ports.proxy}"
    return {
        "ENVIRONMENT": "prod",
        "REDIS_URL": f"redis://127.0.0.1:{ports.redis}/0",
        "CELERY_BROKER_URL": "",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{ports.s3}",
        "S3_BUCKET": "yousync-audio",
        "S3_PORT": str(ports.s3),
        "AWS_REGION": "us-east-1",
        "ANALYSIS_SERVER_URL": f"http://127.0.0.1:{ports.analysis}",
        "SPOOL_DIR": str(run_dir / "spool"),
        # As on several hosts: uploads wait in S3, so no worker needs the API's disk.
        "UPLOAD_STAGING": "s3",
        "LOG_FORMAT": "json",
        "CORS_ORIGINS": proxy,
        **secret_values,
    }


def topology(run_dir: Path, ports: Ports, processes: int) -> Topology:
    return Topology(
        run_dir=run_dir,
        env_file=run_dir / "yousync.env",
        user=current_user(),
        api_port=ports.api,
        api_processes=processes,
        api_metrics_dir=api_metrics_dir(run_dir),
        # nginx connects to the API from 127.0.0.2 (all of 127/8 is loopback), so the API can
        # tell the proxy apart from any other local client.
        proxy_addr="127.0.0.2",
        proxy_listen=f"127.0.0.1:{ports.proxy}",
        nginx_log_dir=run_dir / "nginx",
        flower_port=ports.flower,
        analysis_port=ports.analysis,
        redis_port=ports.redis,
    )


def api_metrics_dir(run_dir: Path) -> Path:
    """Where the API processes keep their metric files (PROMETHEUS_MULTIPROC_DIR)."""
    return run_dir / "api-metrics"


def prepare(run_dir: Path, ports: Ports, processes: int) -> tuple[Path, dict[str, str]]:
    """Write the settings file and render the templates; returns the Procfile and the
    environment to run it with."""
    run_dir = run_dir.resolve()
    for sub in ("nginx", "redis", "spool"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    # Empty before the supervisor starts, as systemd's RuntimeDirectory= leaves the unit's:
    # files of an earlier run would count its values again (yousync/observability/multiprocess.py).
    prepare_dir(api_metrics_dir(run_dir))
    env = settings_env(run_dir, ports, ensure_secrets(run_dir))
    write_env_file(run_dir / "yousync.env", env, "written by `make prod-local` on every run")
    # The settings the templates derive limits from are the ones the processes will read.
    rendered = run_dir / "deploy"
    shutil.rmtree(rendered, ignore_errors=True)
    render_tree(rendered, topology(run_dir, ports, processes).values(settings_from(env)))
    process_env = {
        **os.environ,
        **env,
        "PYTHONUNBUFFERED": "1",
        # What the `ready` process probes and prints: the public side, through nginx.
        "READY_BASE_URL": f"http://127.0.0.1:{ports.proxy}",
        "READY_FLOWER_URL": f"http://127.0.0.1:{ports.proxy}/flower/",
        "READY_TITLE": "YouSync production topology (local) is ready",
        "READY_SECRETS_FILE": str(run_dir / "secrets.env"),
    }
    return rendered / "Procfile.prod", process_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Ports()
    parser.add_argument("--dir", type=Path, default=HOME_DIR / "var" / "prod")
    parser.add_argument("--processes", type=int, default=2, help="API processes (default 2)")
    for name in Ports.__dataclass_fields__:
        parser.add_argument(f"--{name}-port", type=int, default=getattr(defaults, name))
    parser.add_argument("--dry-run", action="store_true", help="prepare, print, start nothing")
    args = parser.parse_args(argv)
    ports = Ports(**{name: getattr(args, f"{name}_port") for name in Ports.__dataclass_fields__})
    procfile, env = prepare(args.dir, ports, args.processes)
    command = [str(HOME_DIR / ".venv" / "bin" / "honcho"), "start", "-f", str(procfile)]
    command += ["-e", "/dev/null", "-d", str(HOME_DIR)]
    if args.dry_run:
        print("prod-local: would run:", " ".join(command))
        return 0
    os.execve(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
