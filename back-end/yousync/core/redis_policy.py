"""Does Redis keep jobs? Checked by the API, the worker and Beat when they start.

Redis holds every job's state, its event Stream and (as the broker) its queued task. Two
settings decide whether they survive:
- `maxmemory-policy`: anything but `noeviction` lets Redis delete keys when it reaches
  `maxmemory` — `allkeys-*` any key, `volatile-*` any key with a TTL, which is every job key.
  Jobs then vanish silently: no error anywhere, a progress page waits for ever. With
  `noeviction` a full Redis refuses writes instead, which the API answers with a 503 and the
  worker retries. So in prod an evicting policy makes the process refuse to start.
- persistence (`appendonly`, `save`): without either a Redis restart loses every job and every
  queued task. That is a warning in prod (a team may accept it knowingly) and a note elsewhere
  (`make dev` and the tests run an ephemeral Redis on purpose).

Managed Redis often disables CONFIG: the policy and AOF are then read from INFO, which shows
no RDB save points, so persistence may be "unknown" there.
deploy/redis/yousync-redis.conf has the settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from yousync.core.config import Settings

CONF_HINT = "deploy/redis/yousync-redis.conf"


class RedisPolicyError(RuntimeError):
    """Redis would evict jobs and this is prod: the process refuses to start."""


class RedisPolicyProblem(Exception):
    """What the API's /readyz reports (an optional check) while Redis would lose jobs."""


@dataclass(frozen=True)
class RedisPolicy:
    """What a Redis server says about eviction and persistence; None where it cannot say."""

    maxmemory_policy: str | None
    maxmemory: int | None
    aof: bool | None
    rdb_save: str | None  # the `save` points; "" = no snapshots, None = unknown (no CONFIG)
    source: str  # "CONFIG" or "INFO"

    @property
    def evicts(self) -> bool:
        return self.maxmemory_policy not in (None, "noeviction")

    @property
    def persists(self) -> bool | None:
        if self.aof or self.rdb_save:
            return True
        if self.aof is False and self.rdb_save == "":
            return False
        return None


@dataclass(frozen=True)
class Problem:
    code: str  # "evicts", "no_persistence", "persistence_unknown"
    message: str
    level: int  # logging level in this environment
    fatal: bool  # refuse to start


def _first(answer: dict[Any, Any]) -> str | None:
    """One value of a CONFIG GET answer (bytes or str, by the client's decoding)."""
    for value in answer.values():
        return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _queue_config(pipe: Any) -> None:
    for name in ("maxmemory-policy", "maxmemory", "appendonly", "save"):
        pipe.config_get(name)


def _from_config(answers: list[dict[Any, Any]]) -> RedisPolicy:
    policy, maxmemory, appendonly, save = (_first(answer) for answer in answers)
    return RedisPolicy(
        maxmemory_policy=policy,
        maxmemory=int(maxmemory) if maxmemory is not None else None,
        aof=appendonly == "yes" if appendonly is not None else None,
        rdb_save=save.strip() if save is not None else None,
        source="CONFIG",
    )


def _queue_info(pipe: Any) -> None:
    pipe.info("memory")
    pipe.info("persistence")


def _from_info(answers: list[dict[str, Any]]) -> RedisPolicy:
    memory, persistence = answers
    policy = memory.get("maxmemory_policy")
    maxmemory = memory.get("maxmemory")
    aof = persistence.get("aof_enabled")
    return RedisPolicy(
        maxmemory_policy=str(policy) if policy is not None else None,
        maxmemory=int(maxmemory) if maxmemory is not None else None,
        aof=bool(int(aof)) if aof is not None else None,
        rdb_save=None,
        source="INFO",
    )


def read_policy(client: redis.Redis) -> RedisPolicy:
    """One round trip of CONFIG GETs; INFO when CONFIG is renamed away or refused (managed
    Redis, ACLs). Raises redis.RedisError when Redis does not answer."""
    try:
        pipe = client.pipeline(transaction=False)
        _queue_config(pipe)
        return _from_config(pipe.execute())
    except redis.ResponseError:
        pipe = client.pipeline(transaction=False)
        _queue_info(pipe)
        return _from_info(pipe.execute())


async def read_policy_async(client: aioredis.Redis) -> RedisPolicy:
    """`read_policy` on the API's asyncio client (its /readyz check)."""
    try:
        pipe = client.pipeline(transaction=False)
        _queue_config(pipe)
        return _from_config(await pipe.execute())
    except redis.ResponseError:
        pipe = client.pipeline(transaction=False)
        _queue_info(pipe)
        return _from_info(await pipe.execute())


# The seed's retention of a finished job: up to this, losing the newest records to a restart
# costs what an hour's expiry would have cost anyway.
DEFAULT_RETENTION_SECONDS = 3600


def problems(
    policy: RedisPolicy, *, where: str, environment: str, retention_seconds: int | None = None
) -> list[Problem]:
    """What is wrong for job state, with the level it deserves in `environment`.
    `retention_seconds` (RESULT_RETENTION_SECONDS, for the job-state Redis): records kept
    longer than the default are meant to outlive a restart, which RDB snapshots alone do not
    promise (what was written since the last snapshot is lost)."""
    prod = environment == "prod"
    found: list[Problem] = []
    if policy.evicts:
        when = (
            f"once it holds maxmemory ({policy.maxmemory} bytes)"
            if policy.maxmemory
            else "once a maxmemory is set and reached"
        )
        found.append(
            Problem(
                "evicts",
                f"Redis at {where} has maxmemory-policy {policy.maxmemory_policy}: {when} it "
                f"deletes keys, and jobs (state, events, queued tasks) vanish without an "
                f"error; set maxmemory-policy noeviction ({CONF_HINT})",
                logging.CRITICAL if prod else logging.WARNING,
                fatal=prod,
            )
        )
    persists = policy.persists
    level = logging.WARNING if prod else logging.INFO
    if persists is False:
        found.append(
            Problem(
                "no_persistence",
                f"Redis at {where} persists nothing (appendonly no, no save points): a "
                f"restart loses every job and queued task; set appendonly yes ({CONF_HINT})",
                level,
                fatal=False,
            )
        )
    elif (
        policy.aof is False
        and retention_seconds is not None
        and retention_seconds > DEFAULT_RETENTION_SECONDS
    ):
        found.append(
            Problem(
                "retention_needs_aof",
                f"Redis at {where} persists by RDB snapshots only (appendonly no), but results "
                f"are kept {retention_seconds} s (RESULT_RETENTION_SECONDS): a restart loses "
                f"every job since the last snapshot; set appendonly yes ({CONF_HINT})",
                level,
                fatal=False,
            )
        )
    elif persists is None:
        found.append(
            Problem(
                "persistence_unknown",
                f"Redis at {where} has AOF off and does not show its RDB save points "
                f"(CONFIG unavailable): make sure the service persists, or a restart loses "
                f"every job",
                level,
                fatal=False,
            )
        )
    return found


def _where(url: str) -> str:
    """host:port/db of a Redis URL, never its password."""
    kwargs = redis.Redis.from_url(url).connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"{kwargs['path']}/{kwargs.get('db', 0)}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def urls_to_check(settings: Settings) -> list[str]:
    """The job-state Redis, and the broker when it is a Redis server of its own (its queued
    tasks are evicted just the same)."""
    urls = [settings.redis_url]
    broker = settings.broker_url
    if settings.broker_is_redis:
        server = _where(broker).rsplit("/", 1)[0]
        if server != _where(settings.redis_url).rsplit("/", 1)[0]:
            urls.append(broker)
    return urls


def report(found: list[Problem], log: logging.Logger) -> None:
    """Log every problem at its level; raise RedisPolicyError when one is fatal."""
    for problem in found:
        prefix = "refusing to start in prod: " if problem.fatal else ""
        log.log(
            problem.level,
            "redis policy: %s%s",
            prefix,
            problem.message,
            extra={"code": problem.code},
        )
    fatal = [problem for problem in found if problem.fatal]
    if fatal:
        raise RedisPolicyError(
            "refusing to start in prod: " + "; ".join(problem.message for problem in fatal)
        )


def check(settings: Settings, log: logging.Logger) -> list[Problem]:
    """The start-up check (blocking; the API runs it in a thread): read each Redis, log what
    is wrong, raise RedisPolicyError when prod must not start. A Redis that does not answer
    is logged and skipped: the processes already wait out Redis outages, and the next start
    checks again."""
    found: list[Problem] = []
    for url in urls_to_check(settings):
        where = _where(url)
        client = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        try:
            policy = read_policy(client)
        except redis.RedisError as exc:
            log.warning("redis policy: could not read the settings of Redis at %s: %s", where, exc)
            continue
        finally:
            client.close()
        retention = settings.job_ttl_seconds if url == settings.redis_url else None
        found += problems(
            policy, where=where, environment=settings.environment, retention_seconds=retention
        )
    report(found, log)
    return found
