"""Start the product's real processes on free loopback ports, for tests and benchmarks.

Every part runs as its own OS process (redis-server, moto's S3 server, the analysis server, a
Celery worker, the API under uvicorn), so a test can kill or restart any of them for real.
Processes get their configuration through the environment only, like production.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from yousync.observability.multiprocess import prepare_dir

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
BACK_END = REPO_ROOT / "back-end"
ANALYSIS_SERVER = REPO_ROOT / "analysis-server"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `predicate` every `interval` seconds until it returns something truthy (returned)
    or `timeout` passes (TimeoutError naming `what`). What it raises propagates at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s (last: {value!r})")
        time.sleep(interval)  # the poll interval


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    """`poll` for a service coming up: an error from the probe means "not answering yet",
    except RuntimeError, which says the process died (no point waiting out the timeout)."""

    def answering() -> bool:
        try:
            return bool(predicate())
        except RuntimeError:
            raise
        except Exception:
            return False

    poll(answering, timeout=timeout, what=f"{what} ready")


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code == 200


@dataclass
class Proc:
    """One child process with its log file; restartable with the same command and env."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 30.0
    # Run before every start, as a supervisor prepares a service (systemd's ExecStartPre=).
    before_start: Callable[[], None] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.before_start is not None:
            self.before_start()
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes its children too
        )
        log.close()
        if self.ready is not None:
            try:
                wait_until(self._alive_and_ready, timeout=self.ready_timeout, what=self.name)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; log tail:\n{self.log_tail()}") from exc
        return self

    def _alive_and_ready(self) -> bool:
        assert self.popen is not None and self.ready is not None
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
            )
        return self.ready()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def signal_group(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.popen is None:
            return
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def restart(self) -> Proc:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(
            "redis-server is not installed: run `make setup` (installs Debian's redis-server)"
        )
    return found


def redis_proc(
    workdir: Path,
    port: int | None = None,
    *,
    persistent: bool = False,
    extra_args: Sequence[str] = (),
) -> Proc:
    """`persistent` keeps an append-only file, so a restart (kill + start) keeps the data;
    `extra_args` are more redis-server options (`--maxmemory-policy allkeys-lru`)."""
    port = port or free_port()
    import redis

    def ready() -> bool:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())

    return Proc(
        name=f"redis:{port}",
        argv=[
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if persistent else "no",
            "--appendfsync",
            "always",
            "--appenddirname",
            f"aof-{port}",
            "--dir",
            str(workdir),
            *extra_args,
        ],
        env=dict(os.environ),
        cwd=workdir,
        log_path=workdir / f"redis-{port}.log",
        ready=ready,
    )


def s3_proc(workdir: Path, bucket: str, port: int | None = None) -> Proc:
    """moto's S3 in server mode; the bucket is created once it answers."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
        return True

    return Proc(
        name=f"s3:{port}",
        argv=[str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ),
        cwd=workdir,
        log_path=workdir / f"s3-{port}.log",
        ready=ready,
    )


def service_env(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    env = {**os.environ, **base, **overrides}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_in_back_end(
    argv: Sequence[str], env: Mapping[str, str], *, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """One short command run from back-end/ to its end, as an operator types it there."""
    return subprocess.run(
        list(argv),
        cwd=BACK_END,
        env=service_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# The API's own flags: on shutdown, open streams get at most 5 s to end.
API_UVICORN_ARGS = ("--timeout-graceful-shutdown", "5")
# How the API is launched everywhere (Procfile.dev, the docs' commands): on glibc's malloc, so
# the GC policy's malloc_trim can hand the memory of ended streams back (CELERY_GUIDE.md §4).
API_ENV = {"PYTHONMALLOC": "malloc"}


def uvicorn_proc(
    name: str,
    app: str,
    env: Mapping[str, str],
    workdir: Path,
    cwd: Path,
    port: int | None = None,
    extra_args: Sequence[str] = (),
) -> Proc:
    """One uvicorn process on loopback, ready once its /healthz answers: the product's
    servers and the benchmarks' reference apps all start this way."""
    port = port or free_port()
    return Proc(
        name=f"{name}:{port}",
        argv=[
            str(BIN / "uvicorn"),
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra_args,
        ],
        env=service_env(env),
        cwd=cwd,
        log_path=workdir / f"{name}-{port}.log",
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
    )


def analysis_proc(env: Mapping[str, str], workdir: Path, port: int | None = None) -> Proc:
    return uvicorn_proc("analysis", "analysis_server.app:app", env, workdir, ANALYSIS_SERVER, port)


def api_proc(
    env: Mapping[str, str],
    workdir: Path,
    port: int | None = None,
    *,
    processes: int = 1,
    forwarded_allow_ips: str | None = None,
    metrics_dir: Path | None = None,
) -> Proc:
    """The API; with `processes` > 1, uvicorn's supervisor and that many processes sharing one
    listening socket, as a production host runs it. With `forwarded_allow_ips` (the proxy's
    address), behind a reverse proxy as in production: X-Forwarded-For and X-Forwarded-Proto
    are believed from that address only. With `metrics_dir`, prometheus-client's multiprocess
    mode in that directory, emptied before every start as systemd's `RuntimeDirectory=`
    empties the unit's (yousync/observability/multiprocess.py)."""
    workers = ("--workers", str(processes)) if processes > 1 else ()
    proxied = (
        ("--proxy-headers", f"--forwarded-allow-ips={forwarded_allow_ips}")
        if forwarded_allow_ips
        else ()
    )
    extra_env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)} if metrics_dir else {}
    proc = uvicorn_proc(
        "api",
        "main:app",
        {**API_ENV, **env, **extra_env},
        workdir,
        BACK_END,
        port,
        (*API_UVICORN_ARGS, *workers, *proxied),
    )
    if metrics_dir is not None:
        proc.before_start = lambda: prepare_dir(metrics_dir)
    return proc


def worker_proc(
    env: Mapping[str, str],
    workdir: Path,
    name: str = "w1",
    concurrency: int = 2,
    queues: str = "audio_queue,maintenance",
    extra_args: Sequence[str] = (),
    cwd: Path | None = None,
    pool: str = "prefork",
) -> Proc:
    """A Celery worker, ready once it consumes (its ready file); `extra_args` are more worker
    options, e.g. production's `--prefetch-multiplier=1 --max-memory-per-child=300000`. With
    `cwd`, it runs there as a worker host runs the installed package, `celery -A
    yousync.worker.celery_app` (back-end/celery_app.py is found from back-end/ only)."""
    hostname = f"{name}@%h"
    ready_marker = workdir / f"worker-{name}.ready"

    def ready() -> bool:
        return ready_marker.exists()

    with contextlib.suppress(FileNotFoundError):
        ready_marker.unlink()
    return Proc(
        name=f"worker:{name}",
        argv=[
            str(BIN / "celery"),
            "-A",
            "celery_app" if cwd is None else "yousync.worker.celery_app",
            "worker",
            "--loglevel=info",
            f"--queues={queues}",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--hostname={hostname}",
            "--without-mingle",
            "--without-gossip",
            "-E",
            *extra_args,
        ],
        env=service_env(env, YOUSYNC_WORKER_READY_FILE=str(ready_marker)),
        cwd=BACK_END if cwd is None else cwd,
        log_path=workdir / f"worker-{name}.log",
        ready=ready,
        ready_timeout=60.0,
    )


def callbacks_worker_proc(env: Mapping[str, str], workdir: Path, name: str = "cb") -> Proc:
    """The worker that drains completion callbacks (Beat sends it the drains), as Procfile.dev
    runs it: its own queue, threads (a drain only waits on HTTP)."""
    return worker_proc(env, workdir, name=name, queues="callbacks", concurrency=2, pool="threads")


def flower_proc(
    env: Mapping[str, str],
    workdir: Path,
    *,
    basic_auth: str,
    port: int | None = None,
    url_prefix: str | None = None,
) -> Proc:
    """Flower against the stack's broker (`celery -A celery_app flower`, as in Procfile.dev);
    with `url_prefix`, every route of it under /`url_prefix`/, as it runs behind the proxy."""
    port = port or free_port()
    prefix = f"/{url_prefix}" if url_prefix else ""
    return Proc(
        name=f"flower:{port}",
        argv=[
            str(BIN / "celery"),
            "-A",
            "celery_app",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
            f"--basic-auth={basic_auth}",
            *([f"--url_prefix={url_prefix}"] if url_prefix else []),
        ],
        env=service_env(env),
        cwd=BACK_END,
        log_path=workdir / f"flower-{port}.log",
        ready=lambda: http_ok(f"http://127.0.0.1:{port}{prefix}/healthcheck"),
        ready_timeout=30.0,
    )


def nginx_binary() -> str:
    """Debian's nginx is in /usr/sbin, which a normal user's PATH may lack."""
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if not found:
        raise RuntimeError(
            "nginx is not installed: run `bash scripts/ensure_system_deps.sh deploy`"
        )
    return found


def http_answers(url: str) -> bool:
    """Any HTTP answer at all: the proxy is up even when what is behind it is not."""
    httpx.get(url, timeout=1.0)
    return True


def nginx_proc(prefix: Path, conf: Path, url: str) -> Proc:
    """nginx run unprivileged from `prefix` with a main config such as deploy/nginx's
    nginx-local.conf (its pid, logs and temp directories inside `prefix`), in the foreground
    so the Proc owns it; ready once `url` gets any HTTP answer."""
    prefix.mkdir(parents=True, exist_ok=True)
    return Proc(
        name=f"nginx:{httpx.URL(url).port}",
        argv=[nginx_binary(), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        env=dict(os.environ),
        cwd=prefix,
        log_path=prefix / "nginx-stderr.log",
        ready=lambda: http_answers(url),
        ready_timeout=10.0,
    )


# Beat's scheduler everywhere (Procfile.dev, production): it sends only while it holds the Beat
# lock, so a second Beat is a standby (yousync/worker/beat_scheduler.py).
BEAT_SCHEDULER = "yousync.worker.beat_scheduler:SingleBeatScheduler"


def beat_proc(env: Mapping[str, str], workdir: Path, name: str = "beat") -> Proc:
    """Celery Beat (as in Procfile.dev), its schedule file in `workdir`; ready once it logs
    that it started, since Beat serves nothing to poll. Beats with different `name`s keep
    their own log and schedule file, as Beats on different hosts would."""
    log_path = workdir / f"{name}.log"
    with contextlib.suppress(FileNotFoundError):
        log_path.unlink()
    schedule = "celerybeat-schedule" if name == "beat" else f"{name}-celerybeat-schedule"
    return Proc(
        name=name,
        argv=[
            str(BIN / "celery"),
            "-A",
            "celery_app",
            "beat",
            "--loglevel=info",
            f"--scheduler={BEAT_SCHEDULER}",
            f"--schedule={workdir / schedule}",
        ],
        env=service_env(env),
        cwd=BACK_END,
        log_path=log_path,
        ready=lambda: "beat: Starting" in log_path.read_text(errors="replace"),
        ready_timeout=30.0,
    )


def proxy_proc(
    workdir: Path,
    env: Mapping[str, str],
    *,
    api_port: int,
    flower_port: int,
    proxy_addr: str = "127.0.0.1",
    port: int | None = None,
    **values: str,
) -> Proc:
    """deploy/nginx's site in front of an API (and Flower) on loopback, as `make prod-local`
    runs it: the templates rendered for the settings in `env` (the API's environment) with
    RUN_DIR = `workdir`/proxy-PORT, so configs land in its conf/, and pid, logs and temp
    directories in its nginx/ (the Proc's cwd). `values` override placeholders
    (CLIENT_HEADER_TIMEOUT="2s")."""
    from deploy.render import DEPLOY_DIR, Topology, render_tree, settings_from

    port = port or free_port()
    run_dir = workdir / f"proxy-{port}"
    topology = Topology(
        run_dir=run_dir,
        nginx_log_dir=run_dir / "nginx",
        api_port=api_port,
        flower_port=flower_port,
        proxy_addr=proxy_addr,
        proxy_listen=f"127.0.0.1:{port}",
        extra=values,
    )
    render_tree(run_dir / "conf", topology.values(settings_from(env)), DEPLOY_DIR / "nginx")
    return nginx_proc(
        run_dir / "nginx", run_dir / "conf" / "nginx-local.conf", f"http://127.0.0.1:{port}/"
    )
