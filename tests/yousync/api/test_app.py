"""The API process, as `uvicorn main:app` loads it from back-end/: it publishes tasks by name
and never imports worker code, so its memory holds no pipeline, no pydub, no audio preparation
— not after its lifespan started, nor after it published a task."""

from __future__ import annotations

import sys

from devtools import stack

SCRIPT = """
import sys
from starlette.testclient import TestClient
import io, wave
import main
take = io.BytesIO()
with wave.open(take, "wb") as out:
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(8000)
    out.writeframes(bytes(16000))
with TestClient(main.app) as client:
    assert client.get("/healthz").status_code == 200
    # The publishing path runs too: an upload is enqueued by name, then cancelled so no
    # worker of the session picks it up.
    files = {"file": ("take.wav", take.getvalue(), "audio/wav")}
    accepted = client.post("/tokens/lifespan-check/upload-audio", files=files)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert client.post(f"/tokens/analysis-cancel/{job_id}").status_code == 200
loaded = [name for name in sys.modules if name == "pydub" or name.startswith("yousync.worker")]
print(" ".join(sorted(loaded)) or "none")
"""


def test_api_when_its_lifespan_has_run_then_no_worker_module_is_loaded(
    backend_env: dict[str, str],
) -> None:
    result = stack.run_in_back_end([sys.executable, "-c", SCRIPT], backend_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["none"]
