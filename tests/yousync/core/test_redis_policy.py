"""Redis that would lose jobs is noticed at start: read from real redis-servers started with the
settings in question, then real API, worker and Beat processes started against them (a warning
in dev, a refusal in prod), and the tests' own Redis (noeviction) passing without a warning."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from devtools import stack
from yousync.core import redis_policy
from yousync.core.config import Settings
from yousync.core.redis_policy import RedisPolicy, RedisPolicyError

EVICTING = ("--maxmemory-policy", "allkeys-lru")
# Values that pass prod's refusal of `.env`'s local dummies (core/config.py).
PROD = {
    "ENVIRONMENT": "prod",
    "AWS_ACCESS_KEY_ID": "AKIAPRODEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "prod-example-secret-key",
    "FLOWER_BASIC_AUTH": "ops:a-long-prod-password",
    "ANALYSIS_SHARED_SECRET": "a-long-prod-analysis-secret",
    "API_KEYS": "prod-key-1",
    "STREAM_TOKEN_SECRET": "a-long-prod-stream-secret",
    # The test stack allowlists callback hosts, so prod needs a signing secret too.
    "CALLBACK_SECRET": "whsec_cHJvZC1jYWxsYmFjay1zaWduaW5nLXNlY3JldA==",
}


def url_of(proc: stack.Proc) -> str:
    return f"redis://127.0.0.1:{proc.name.split(':')[1]}/0"


@pytest.fixture
def own_redis(workdir: Path) -> Iterator[Callable[..., str]]:
    """Factory: a redis-server of the test's own with these options; returns its URL."""
    started: list[stack.Proc] = []

    def make(*options: str) -> str:
        proc = stack.redis_proc(workdir, extra_args=options).start()
        started.append(proc)
        return url_of(proc)

    yield make
    for proc in started:
        proc.kill()


def read(url: str) -> RedisPolicy:
    with redis.Redis.from_url(url) as client:
        return redis_policy.read_policy(client)


def codes_and_levels(policy: RedisPolicy, environment: str) -> list[tuple[str, int, bool]]:
    found = redis_policy.problems(policy, where="test", environment=environment)
    return [(p.code, p.level, p.fatal) for p in found]


# --- reading and judging a Redis --------------------------------------------------------------


def test_policy_when_redis_is_the_tests_own_then_noeviction_and_no_persistence_noted_not_warned(
    redis_url: str,
) -> None:
    policy = read(redis_url)

    assert policy == RedisPolicy("noeviction", 0, False, "", "CONFIG")
    assert not policy.evicts and policy.persists is False
    # An ephemeral Redis is what dev and the tests run on purpose: a note there, a warning in prod.
    assert codes_and_levels(policy, "test") == [("no_persistence", logging.INFO, False)]
    assert codes_and_levels(policy, "prod") == [("no_persistence", logging.WARNING, False)]


def test_policy_when_retention_is_days_and_only_rdb_snapshots_then_aof_asked_for() -> None:
    rdb_only = RedisPolicy("noeviction", 0, False, "3600 1", "CONFIG")
    days = 3 * 86400

    found = redis_policy.problems(rdb_only, where="t", environment="prod", retention_seconds=days)

    assert [(p.code, p.level, p.fatal) for p in found] == [
        ("retention_needs_aof", logging.WARNING, False)
    ]
    assert "RESULT_RETENTION_SECONDS" in found[0].message
    # The default hour, or AOF on: nothing to say.
    hour = redis_policy.DEFAULT_RETENTION_SECONDS
    assert (
        redis_policy.problems(rdb_only, where="t", environment="prod", retention_seconds=hour) == []
    )
    aof = RedisPolicy("noeviction", 0, True, "", "CONFIG")
    assert redis_policy.problems(aof, where="t", environment="prod", retention_seconds=days) == []


def test_policy_when_redis_evicts_then_a_warning_in_dev_and_fatal_in_prod(
    own_redis: Callable[..., str],
) -> None:
    policy = read(own_redis(*EVICTING, "--maxmemory", "64mb"))

    assert policy.maxmemory_policy == "allkeys-lru" and policy.maxmemory == 64 * 1024 * 1024
    assert policy.evicts
    assert codes_and_levels(policy, "dev")[0] == ("evicts", logging.WARNING, False)
    assert codes_and_levels(policy, "prod")[0] == ("evicts", logging.CRITICAL, True)


@pytest.mark.parametrize("name", ["volatile-lru", "volatile-ttl", "allkeys-random"])
def test_policy_when_any_policy_but_noeviction_then_it_evicts(name: str) -> None:
    # volatile-* too: every job key carries a TTL.
    assert RedisPolicy(name, 1 << 30, True, "", "CONFIG").evicts


def test_policy_when_config_is_disabled_then_read_from_info_and_persistence_unknown(
    own_redis: Callable[..., str],
) -> None:
    # As on managed Redis services, which rename CONFIG away.
    policy = read(own_redis(*EVICTING, "--rename-command", "CONFIG", ""))

    assert policy == RedisPolicy("allkeys-lru", 0, False, None, "INFO")
    assert policy.persists is None
    assert [code for code, _, _ in codes_and_levels(policy, "prod")] == [
        "evicts",
        "persistence_unknown",
    ]


def test_policy_when_aof_is_on_then_it_persists(own_redis: Callable[..., str]) -> None:
    policy = read(own_redis("--appendonly", "yes"))

    assert policy.aof is True and policy.persists is True
    assert codes_and_levels(policy, "prod") == []


def test_check_when_prod_and_redis_evicts_then_logs_and_refuses(
    own_redis: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(_env_file=None, **lowercase(PROD), redis_url=own_redis(*EVICTING))

    with pytest.raises(RedisPolicyError, match=r"refusing to start in prod: .*allkeys-lru"):
        redis_policy.check(settings, logging.getLogger("test"))

    assert [r.levelno for r in caplog.records] == [logging.CRITICAL, logging.WARNING]


def test_check_when_redis_does_not_answer_then_warns_and_lets_the_process_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"redis://127.0.0.1:{stack.free_port()}/0"
    settings = Settings(_env_file=None, **lowercase(PROD), redis_url=down)

    assert redis_policy.check(settings, logging.getLogger("test")) == []

    assert "could not read the settings of Redis at 127.0.0.1:" in caplog.text


def test_urls_to_check_when_the_broker_is_another_redis_server_then_both_are_checked() -> None:
    same = Settings(_env_file=None, redis_url="redis://h:6379/0", celery_broker_url="")
    other = Settings(
        _env_file=None,
        redis_url="redis://h:6379/0",
        celery_broker_url="redis://:secret@broker:6380/2",
    )
    amqp = Settings(
        _env_file=None,
        redis_url="redis://h:6379/0",
        celery_broker_url="amqp://u:p@rabbit//",
    )

    assert redis_policy.urls_to_check(same) == ["redis://h:6379/0"]  # db 1 of the same server
    assert redis_policy.urls_to_check(other) == [
        "redis://h:6379/0",
        "redis://:secret@broker:6380/2",
    ]
    assert redis_policy.urls_to_check(amqp) == ["redis://h:6379/0"]


def lowercase(env: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in env.items()}


# --- the processes that check at start ----------------------------------------------------------


def exits(proc: stack.Proc, timeout: float = 60) -> tuple[int, str]:
    """Start a process that should refuse to start; its exit code and log."""
    proc.ready = None
    proc.start()
    assert proc.popen is not None
    code = proc.popen.wait(timeout)
    return code, proc.log_path.read_text(errors="replace")


def test_api_worker_and_beat_when_prod_and_redis_evicts_then_each_refuses_to_start(
    stack_env: dict[str, str], own_redis: Callable[..., str], workdir: Path, tmp_path: Path
) -> None:
    env = {**stack_env, **PROD, "REDIS_URL": own_redis(*EVICTING)}
    procs = [
        stack.api_proc(env, tmp_path),
        stack.worker_proc(env, tmp_path, name="prod-refused"),
        stack.beat_proc(env, tmp_path),
    ]
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            results = list(pool.map(exits, procs))
    finally:
        for proc in procs:
            proc.kill()

    for proc, (code, log) in zip(procs, results, strict=True):
        assert code != 0, f"{proc.name} started:\n{log}"
        assert "refusing to start in prod: Redis at 127.0.0.1:" in log, log
        assert "maxmemory-policy allkeys-lru" in log and "noeviction" in log
    assert not (tmp_path / "worker-prod-refused.ready").exists(), "the worker never consumed"


def test_api_when_dev_and_redis_evicts_then_serves_warns_and_readyz_reports_it_optional(
    stack_env: dict[str, str], own_redis: Callable[..., str], tmp_path: Path
) -> None:
    env = {**stack_env, "ENVIRONMENT": "dev", "REDIS_URL": own_redis(*EVICTING)}
    api = stack.api_proc(env, tmp_path).start()
    try:
        readyz = httpx.get(f"http://127.0.0.1:{api.name.split(':')[1]}/readyz", timeout=10)
    finally:
        api.stop()
    log = api.log_path.read_text()

    assert "level=warning" in log and "maxmemory-policy allkeys-lru" in log, log
    check = readyz.json()["checks"]["redis_policy"]
    assert check["status"] == "down" and check["required"] is False
    assert "allkeys-lru" in check["error"]
    assert readyz.json()["checks"]["redis"]["status"] == "up"


def test_stack_when_redis_is_noeviction_then_api_and_worker_start_without_a_policy_warning(
    api_url: str, worker_service: stack.Proc, api_service: stack.Proc
) -> None:
    readyz = httpx.get(f"{api_url}/readyz", timeout=10).json()

    assert readyz["checks"]["redis_policy"]["status"] == "up"
    for proc in (api_service, worker_service):
        lines = proc.log_path.read_text().splitlines()
        policy = [line for line in lines if "redis policy" in line]
        assert not [line for line in policy if "level=info" not in line], policy
