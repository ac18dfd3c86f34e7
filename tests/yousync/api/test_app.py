"""The API process, as `uvicorn main:app` loads it from back-end/: it publishes tasks by name
and never imports worker code, so its memory holds no pipeline, no pydub, no audio preparation."""

from __future__ import annotations

import sys

from devtools import stack

SCRIPT = """
import sys
from starlette.testclient import TestClient
import main
with TestClient(main.app) as client:
    assert client.get("/healthz").status_code == 200
loaded = [name for name in sys.modules if name == "pydub" or name.startswith("yousync.worker")]
print(" ".join(sorted(loaded)) or "none")
"""


def test_api_when_its_lifespan_has_run_then_no_worker_module_is_loaded(
    backend_env: dict[str, str],
) -> None:
    result = stack.run_in_back_end([sys.executable, "-c", SCRIPT], backend_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["none"]
