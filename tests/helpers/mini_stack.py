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
