"""The product's API exactly as `uvicorn main:app` runs it, plus bench/_gc_probe.py's hooks
(a `gc.callbacks` timer and a SIGUSR1 snapshot), so the fan-out benchmark can put the API's
garbage-collection pauses next to the delivery latencies it measures. `app` is the product's
own app object, not a wrapper: no middleware, route or setting differs.

Run from the repository root (uvicorn puts its working directory on the import path):
`BENCH_GC_LOG=/tmp/gc.log uvicorn bench._gc_logged_api:app`.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench._gc_probe import install

install(Path(os.environ["BENCH_GC_LOG"]))

from yousync.api.app import app  # noqa: E402  (hooks first, so the import-time collections are seen too)

__all__ = ["app"]
