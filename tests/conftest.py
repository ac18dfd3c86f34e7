"""Session-wide real services: a private redis-server, moto's S3 server, the analysis server,
a Celery worker and the API under uvicorn, each a real process on a free loopback port.

Each test that talks to the stack gets a clean job-state database (db 0); Celery's broker lives
on db 1 of the same private server and is never flushed under a running worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis

from devtools import stack
from tests.helpers.mini_stack import MiniStack, mini_stacks
from yousync.core.storage import staged_key

BUCKET = "yousync-test"
ANALYSIS_SECRET = "test-analysis-secret"


# Any test that needs one of these starts (or talks to) real processes of the stack.
PROCESS_FIXTURES = frozenset(
    {"workdir", "redis_service", "s3_service", "analysis_service", "worker_service", "api_service"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark them `integration`, so `-m "not integration"` runs the unit layer alone in seconds.
    Fixture closures are transitive: a test that asks for `pipeline` is marked too."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def redis_service(workdir: Path) -> Iterator[stack.Proc]:
    proc = stack.redis_proc(workdir).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="session")
def redis_url(redis_service: stack.Proc) -> str:
    port = redis_service.name.split(":")[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def s3_service(workdir: Path) -> Iterator[stack.Proc]:
    proc = stack.s3_proc(workdir, BUCKET).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="session")
def s3_endpoint_url(s3_service: stack.Proc) -> str:
    return f"http://127.0.0.1:{s3_service.name.split(':')[1]}"


@pytest.fixture(scope="session")
def s3_bucket(s3_service: stack.Proc) -> str:
    return BUCKET


@pytest.fixture(scope="session")
def s3_client(s3_endpoint_url: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture(scope="session")
def spool_dir(workdir: Path) -> Path:
    path = workdir / "spool"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def analysis_port() -> int:
    return stack.free_port()


@pytest.fixture(scope="session")
def stack_env(
    s3_endpoint_url: str, s3_bucket: str, spool_dir: Path, analysis_port: int
) -> dict[str, str]:
    """The environment every service process gets (the tests' `.env`)."""
    return {
        "ENVIRONMENT": "test",
        "S3_ENDPOINT_URL": s3_endpoint_url,
        "S3_BUCKET": s3_bucket,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "SPOOL_DIR": str(spool_dir),
        "ANALYSIS_SERVER_URL": f"http://127.0.0.1:{analysis_port}",
        "ANALYSIS_MIN_SECONDS": "1.0",
        "ANALYSIS_SHARED_SECRET": ANALYSIS_SECRET,
        "MAX_UPLOAD_MB": "8",
        "TASK_RETRY_DELAY": "0.2",
        "TASK_MAX_RETRIES": "2",
        "AUDIO_STORE_FORMAT": "flac",
        "API_KEYS": "",
        "STALL_SECONDS": "2",
        # A SIGKILLed worker's unacked task comes back after this; it must exceed
        # the hard time limit, as in production.
        "BROKER_VISIBILITY_TIMEOUT": "12",
        "BROKER_RESTORE_INTERVAL_SECONDS": "2",
        "TASK_TIME_LIMIT": "10",
        "TASK_SOFT_TIME_LIMIT": "9",
        "S3_MULTIPART_THRESHOLD_MB": "5",
        # Callback receivers of the tests listen on 127.0.0.3: allowlisted as an address, so
        # 127.0.0.1 stays internal and refused; `localhost` is an allowlisted name that
        # resolves to loopback, refused for it (core/callback_target.py).
        "CALLBACK_ALLOWED_HOSTS": "localhost,127.0.0.3",
    }


@pytest.fixture(scope="session")
def analysis_service(
    stack_env: dict[str, str], workdir: Path, analysis_port: int
) -> Iterator[stack.Proc]:
    proc = stack.analysis_proc(stack_env, workdir, port=analysis_port).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="session")
def analysis_url(analysis_service: stack.Proc) -> str:
    return f"http://127.0.0.1:{analysis_service.name.split(':')[1]}"


@pytest.fixture(scope="session")
def backend_env(stack_env: dict[str, str], redis_url: str) -> dict[str, str]:
    return {**stack_env, "REDIS_URL": redis_url}


@pytest.fixture(scope="session")
def worker_service(
    backend_env: dict[str, str], workdir: Path, analysis_service: stack.Proc
) -> Iterator[stack.Proc]:
    proc = stack.worker_proc(backend_env, workdir).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def api_service(backend_env: dict[str, str], workdir: Path) -> Iterator[stack.Proc]:
    proc = stack.api_proc(backend_env, workdir).start()
    yield proc
    proc.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A clean job-state db for the test (db 0); the broker's db 1 is left alone."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def api_url(api_service: stack.Proc, redis_client: redis.Redis) -> str:
    return f"http://127.0.0.1:{api_service.name.split(':')[1]}"


@pytest.fixture
def pipeline(api_url: str, worker_service: stack.Proc, analysis_service: stack.Proc) -> str:
    """The whole stack running: returns the API's base URL."""
    return api_url


@pytest.fixture(scope="session")
def s3_staging_api(backend_env: dict[str, str], workdir: Path) -> Iterator[stack.Proc]:
    """An API with UPLOAD_STAGING=s3 beside the session's spool one, on the same Redis and
    broker: the worker follows each job's record (`staged_key` or `spool_path`), so the
    session's worker serves both."""
    proc = stack.api_proc({**backend_env, "UPLOAD_STAGING": "s3"}, workdir).start()
    yield proc
    proc.stop()


@dataclass(frozen=True)
class StagingPipeline:
    """The whole stack behind an API with one UPLOAD_STAGING (`staging`) at `url`."""

    url: str
    staging: str
    spool_dir: Path
    s3_client: Any
    bucket: str

    def upload_left(self, job_id: str) -> bool:
        """Whether the job's upload is still where the API put it (file or staged object)."""
        if self.staging == "s3":
            listed = self.s3_client.list_objects_v2(Bucket=self.bucket, Prefix=staged_key(job_id))
            return bool(listed.get("KeyCount"))
        return any(self.spool_dir.glob(f"{job_id}*"))


@pytest.fixture(params=["spool", "s3"])
def staging_pipeline(
    request: pytest.FixtureRequest, pipeline: str, spool_dir: Path, s3_client: Any, s3_bucket: str
) -> StagingPipeline:
    """`pipeline` once for each UPLOAD_STAGING: the session's API (spool) or `s3_staging_api`."""
    url = pipeline
    if request.param == "s3":
        api: stack.Proc = request.getfixturevalue("s3_staging_api")
        url = f"http://127.0.0.1:{api.name.split(':')[1]}"
    return StagingPipeline(url, request.param, spool_dir, s3_client, s3_bucket)


@pytest.fixture
def mini_stack(
    stack_env: dict[str, str], workdir: Path, analysis_service: stack.Proc
) -> Iterator[Callable[..., MiniStack]]:
    """Factory: a private redis + worker + API with setting overrides (shared S3 server)."""
    with mini_stacks(stack_env, workdir) as make:
        yield make


@dataclass
class OwnRedisApi:
    redis: stack.Proc
    redis_url: str
    api_url: str


@pytest.fixture
def api_on_own_redis(stack_env: dict[str, str], workdir: Path) -> Iterator[OwnRedisApi]:
    """An API process on a Redis of its own that the test may kill and start again (it keeps
    its data on disk, so jobs survive the restart) without disturbing any other test."""
    own_redis = stack.redis_proc(workdir, persistent=True).start()
    redis_url = f"redis://127.0.0.1:{own_redis.name.split(':')[1]}/0"
    api = stack.api_proc({**stack_env, "REDIS_URL": redis_url}, workdir).start()
    try:
        yield OwnRedisApi(own_redis, redis_url, f"http://127.0.0.1:{api.name.split(':')[1]}")
    finally:
        api.stop()
        own_redis.kill()


@dataclass
class OwnBrokerApi:
    broker: stack.Proc
    broker_url: str
    api_url: str
    env: dict[str, str]  # the API's environment: start workers or Beat on the same broker with it


@pytest.fixture
def api_on_own_broker(
    backend_env: dict[str, str], workdir: Path, redis_client: redis.Redis
) -> Iterator[OwnBrokerApi]:
    """An API whose Celery broker is a Redis server of its own (job state stays on the
    session's Redis): no worker consumes its queues until the test starts one, and the test may
    kill the broker without disturbing any other test."""
    own_broker = stack.redis_proc(workdir).start()
    broker_url = f"redis://127.0.0.1:{own_broker.name.split(':')[1]}/1"
    env = {**backend_env, "CELERY_BROKER_URL": broker_url}
    api = stack.api_proc(env, workdir).start()
    try:
        yield OwnBrokerApi(
            own_broker, broker_url, f"http://127.0.0.1:{api.name.split(':')[1]}", env
        )
    finally:
        api.stop()
        own_broker.kill()


@pytest.fixture
def token_id() -> str:
    return f"tok-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def flower_auth() -> tuple[str, str]:
    return ("flower-test", "flower-secret")


@pytest.fixture(scope="session")
def flower_service(
    backend_env: dict[str, str],
    workdir: Path,
    worker_service: stack.Proc,
    flower_auth: tuple[str, str],
) -> Iterator[stack.Proc]:
    """Flower against the test broker with basic auth `flower_auth` (as `make dev` runs it)."""
    proc = stack.flower_proc(backend_env, workdir, basic_auth=":".join(flower_auth)).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def flower_url(flower_service: stack.Proc) -> str:
    return f"http://127.0.0.1:{flower_service.name.split(':')[1]}"


@pytest.fixture(scope="session")
def celery_client(backend_env: dict[str, str], worker_service: stack.Proc) -> Iterator[object]:
    """A bare Celery client (`celery.Celery`) of the test broker: sends tasks by name, as Beat
    does, to the session's worker and reads their results back."""
    from celery import Celery

    from yousync.core.config import Settings

    broker = Settings(redis_url=backend_env["REDIS_URL"]).broker_url
    app = Celery("test-client", broker=broker, backend=broker)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    yield app
    app.close()


# The address nginx connects to the API from in the proxy tests (Linux routes all of 127/8 to
# lo): the only one the proxied API believes X-Forwarded-For from, while the tests themselves
# connect from 127.0.0.1, so a forged header sent straight to the API comes from elsewhere.
PROXY_ADDR = "127.0.0.2"
# Short, so a test can watch nginx drop a client that never finishes its headers.
PROXY_HEADER_TIMEOUT_SECONDS = 2


@dataclass
class NginxProxy:
    """nginx (deploy/nginx, rendered) in front of `api` and Flower; `run_dir` holds its pid,
    logs and temp directories."""

    url: str
    proc: stack.Proc
    api: stack.Proc

    @property
    def run_dir(self) -> Path:
        return self.proc.cwd

    @property
    def access_log(self) -> Path:
        return self.run_dir / "yousync-access.log"

    @property
    def api_port(self) -> int:
        return int(self.api.name.split(":")[1])


@pytest.fixture(scope="session")
def proxied_api(backend_env: dict[str, str], workdir: Path) -> Iterator[stack.Proc]:
    """The API as production runs it behind the proxy: two processes under uvicorn's
    supervisor, believing forwarded headers from PROXY_ADDR only."""
    proc = stack.api_proc(backend_env, workdir, processes=2, forwarded_allow_ips=PROXY_ADDR).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def proxied_flower(
    backend_env: dict[str, str], workdir: Path, flower_auth: tuple[str, str]
) -> Iterator[stack.Proc]:
    """Flower as it runs behind the proxy: under /flower/, with basic auth `flower_auth`."""
    proc = stack.flower_proc(
        backend_env, workdir, basic_auth=":".join(flower_auth), url_prefix="flower"
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def nginx_proxy(
    backend_env: dict[str, str],
    workdir: Path,
    proxied_api: stack.Proc,
    proxied_flower: stack.Proc,
) -> Iterator[NginxProxy]:
    """Real nginx with the rendered site in front of `proxied_api` and `proxied_flower`."""
    proc = stack.proxy_proc(
        workdir,
        backend_env,
        api_port=int(proxied_api.name.split(":")[1]),
        flower_port=int(proxied_flower.name.split(":")[1]),
        proxy_addr=PROXY_ADDR,
        CLIENT_HEADER_TIMEOUT=f"{PROXY_HEADER_TIMEOUT_SECONDS}s",
    ).start()
    yield NginxProxy(f"http://127.0.0.1:{proc.name.split(':')[1]}", proc, proxied_api)
    proc.stop()
