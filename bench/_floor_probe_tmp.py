import os
import sys
import tempfile
import time
from pathlib import Path

from bench._stack import cpu_seconds, raise_fd_limit
from bench.bench_sse_fanout import ClientFleet, uvicorn_server
from bench.bench_sse_storm import api_env, new_paths, storm
from devtools import stack

N = int(sys.argv[1])
apps = sys.argv[2].split(",")


def main():
    raise_fd_limit()
    work = Path(tempfile.mkdtemp())
    redis = stack.redis_proc(work).start()
    url = f"redis://127.0.0.1:{redis.name.split(':')[1]}/0"
    env = api_env(url, work / "spool")
    for spec in apps:
        app, _, extra = spec.partition("@")
        env2 = dict(env, **dict(kv.split("=") for kv in extra.split("+") if kv))
        fleet = ClientFleet(2)
        proc = uvicorn_server(
            "api", app, env2, stack.BACK_END if app.startswith("main") else Path.cwd(), work
        )
        port = int(proc.name.split(":")[1])
        if app.startswith("main") or "_tmp:" in app:
            _, paths = new_paths(url, N, 1000)
        else:
            paths = [f"/stream/{i}" for i in range(N)]
        import subprocess

        spy = (
            subprocess.Popen(
                [
                    ".venv/bin/py-spy",
                    "record",
                    "--pid",
                    str(proc.pid),
                    "-d",
                    "12",
                    "-r",
                    "250",
                    "-f",
                    "raw",
                    "-o",
                    f"/tmp/prof-{app.split(':')[-1]}.raw",
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if os.environ.get("SPY")
            else None
        )
        time.sleep(1 if spy else 0)
        c0 = cpu_seconds(proc.pid)
        r = storm(fleet, port, paths, 30)
        print(
            spec,
            "cpu",
            round(cpu_seconds(proc.pid) - c0, 2),
            {
                k: r[k]
                for k in (
                    "held",
                    "non_200_total",
                    "seconds",
                    "held_ms_p50",
                    "held_ms_p99",
                    "held_ms_max",
                )
            },
            flush=True,
        )
        spy and spy.wait()
        fleet.stop()
        proc.stop()
    redis.stop()


if __name__ == "__main__":
    main()
