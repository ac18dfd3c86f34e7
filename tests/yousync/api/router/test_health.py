"""/healthz and /readyz against real processes: every dependency reported with its own status
and latency; 503 naming the part that is down — with the dependency really down (an API
process pointed at a port where nothing listens and at a bucket that does not exist)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools import stack

DEPENDENCIES = {"redis", "broker", "s3", "analysis_server"}
# Reported, never failing readiness: whether Redis would lose jobs (test_redis_policy.py).
OPTIONAL = {"redis_policy"}


@pytest.fixture(scope="module")
def broken_api(backend_env: dict[str, str], workdir: Path) -> Iterator[str]:
    """A second API process whose analysis server and S3 bucket do not exist."""
    dead_port = stack.free_port()  # bound and released: nothing listens there
    env = {
        **backend_env,
        "ANALYSIS_SERVER_URL": f"http://127.0.0.1:{dead_port}",
        "S3_BUCKET": "yousync-no-such-bucket",
    }
    proc = stack.api_proc(env, workdir).start()
    yield f"http://127.0.0.1:{proc.name.split(':')[1]}"
    proc.stop()


def test_healthz_when_process_runs_then_200_without_touching_dependencies(api_url: str) -> None:
    response = httpx.get(f"{api_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_when_everything_is_up_then_200_with_each_dependency_and_latency(
    pipeline: str,
) -> None:
    response = httpx.get(f"{pipeline}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == DEPENDENCIES | OPTIONAL
    for name, check in body["checks"].items():
        assert check["status"] == "up" and check["ok"] is True, (name, check)
        assert check["required"] is (name not in OPTIONAL)
        assert 0 <= check["latency_ms"] < 2000, (name, check)
        assert "error" not in check
    assert response.headers["cache-control"] == "no-store"


def test_readyz_when_analysis_server_and_bucket_missing_then_503_naming_them(
    broken_api: str, redis_service: stack.Proc, s3_service: stack.Proc
) -> None:
    # Alive all the same: a load balancer must not restart it for a dependency's outage.
    assert httpx.get(f"{broken_api}/healthz").status_code == 200

    response = httpx.get(f"{broken_api}/readyz", timeout=10)
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    checks = body["checks"]
    assert set(checks) == DEPENDENCIES | OPTIONAL
    assert checks["redis"]["status"] == "up" and checks["broker"]["status"] == "up"
    for name in ("analysis_server", "s3"):
        assert checks[name]["status"] == "down" and checks[name]["ok"] is False, checks[name]
        assert checks[name]["error"], checks[name]
        assert checks[name]["latency_ms"] < 2500  # each check has its own time limit
    assert "ConnectError" in checks["analysis_server"]["error"]
    assert "404" in checks["s3"]["error"] or "NoSuchBucket" in checks["s3"]["error"]


def test_readyz_when_redis_is_down_then_503_with_redis_and_broker_down(
    backend_env: dict[str, str], workdir: Path
) -> None:
    dead = stack.free_port()
    env = {
        **backend_env,
        "REDIS_URL": f"redis://127.0.0.1:{dead}/0",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{dead}/1",
    }
    proc = stack.api_proc(env, workdir).start()
    try:
        base = f"http://127.0.0.1:{proc.name.split(':')[1]}"
        response = httpx.get(f"{base}/readyz", timeout=10)
        assert response.status_code == 503, response.text
        checks = response.json()["checks"]
        assert checks["redis"]["status"] == "down" and checks["broker"]["status"] == "down"
        assert checks["s3"]["status"] == "up" and checks["analysis_server"]["status"] == "up"
    finally:
        proc.stop()
