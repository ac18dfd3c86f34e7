"""deploy/redis/yousync-redis.conf, included from a server's own configuration as the file says,
gives a real redis-server the settings the start-up check wants: no eviction, persistence on."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import redis

from devtools import stack
from yousync.core import redis_policy
from yousync.core.config import Settings

CONF = stack.REPO_ROOT / "deploy" / "redis" / "yousync-redis.conf"


@pytest.mark.integration  # a real redis-server, without a stack fixture that would mark it
def test_redis_conf_when_included_then_redis_keeps_jobs_and_prod_starts_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = stack.free_port()
    own = tmp_path / "redis.conf"  # a team's configuration: its own lines, then ours
    own.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\ninclude {CONF}\n")
    server = stack.Proc(
        name=f"redis:{port}",
        argv=[stack.redis_server_binary(), str(own)],
        env=dict(os.environ),
        cwd=tmp_path,
        log_path=tmp_path / "redis.log",
        ready=lambda: bool(redis.Redis(port=port, socket_timeout=1).ping()),
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        server.start()
        with redis.Redis.from_url(url) as client:
            policy = redis_policy.read_policy(client)
        prod = Settings(
            _env_file=None,
            environment="prod",
            redis_url=url,
            flower_basic_auth="ops:a-long-prod-password",
            analysis_shared_secret="a-long-prod-analysis-secret",
        )
        found = redis_policy.check(prod, logging.getLogger("test"))
    finally:
        server.kill()

    assert policy.maxmemory_policy == "noeviction"
    assert policy.aof is True and policy.rdb_save == "3600 1"
    assert found == []
    assert not caplog.records
