"""A private redis + worker + API with its own settings, beside the session's stack (whose S3
server and analysis server it shares): for tests that need a worker configured differently."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from devtools import stack


@dataclass
class MiniStack:
    api_url: str
    redis: redis.Redis
    procs: list[stack.Proc]  # [redis, worker, API]


@contextlib.contextmanager
def mini_stacks(stack_env: dict[str, str], workdir: Path) -> Iterator[Callable[..., MiniStack]]:
    """A factory of mini stacks (`make(**overrides)`, the worker's concurrency and extra
    options too); every one is killed on exit."""
    started: list[stack.Proc] = []
    clients: list[redis.Redis] = []

    def make(
        *,
        persistent_redis: bool = False,
        concurrency: int = 2,
        worker_args: Sequence[str] = (),
        **overrides: str,
    ) -> MiniStack:
        own_redis = stack.redis_proc(workdir, persistent=persistent_redis).start()
        started.append(own_redis)
        url = f"redis://127.0.0.1:{own_redis.name.split(':')[1]}/0"
        env = {**stack_env, "REDIS_URL": url, **overrides}
        worker = stack.worker_proc(
            env,
            workdir,
            name=f"mini{uuid.uuid4().hex[:6]}",
            concurrency=concurrency,
            extra_args=worker_args,
        ).start()
        started.append(worker)
        api = stack.api_proc(env, workdir).start()
        started.append(api)
        client = redis.Redis.from_url(url, decode_responses=True)
        clients.append(client)
        return MiniStack(
            api_url=f"http://127.0.0.1:{api.name.split(':')[1]}",
            redis=client,
            procs=[own_redis, worker, api],
        )

    try:
        yield make
    finally:
        for client in clients:
            client.close()
            client.connection_pool.disconnect()
        for proc in reversed(started):
            proc.kill()


# A stack whose worker and API reach S3 through a slow link (tests/helpers/proxy.py): 12 MB of
# white noise stays ~12 MB as FLAC and goes up as three 5 MB parts (S3 and moto refuse smaller
# parts but the last, so the threshold, also the part size, cannot go lower), ~3 s at 4 MB/s:
# room for a cancel or a DELETE to land mid-upload.
SLOW_S3_THRESHOLD_MB = 5
SLOW_S3_UPLOAD_MB = 12
SLOW_S3_BYTES_PER_SECOND = 4 * 1024 * 1024


def slow_s3_settings(s3_url: str) -> dict[str, str]:
    """Environment of such a stack, `s3_url` being the proxy's."""
    return {
        "S3_ENDPOINT_URL": s3_url,
        "S3_MULTIPART_THRESHOLD_MB": str(SLOW_S3_THRESHOLD_MB),
        "MAX_UPLOAD_MB": str(SLOW_S3_UPLOAD_MB + 4),
        # Slow upload plus the analysis of ~2 min of audio: more than the test stack's 9 s soft
        # limit may allow on a loaded host (visibility must exceed the limit).
        "TASK_SOFT_TIME_LIMIT": "50",
        "TASK_TIME_LIMIT": "60",
        "BROKER_VISIBILITY_TIMEOUT": "90",
    }
