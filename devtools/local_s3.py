"""Local S3 for `make dev`: moto's server on S3_PORT, with S3_BUCKET created at start.

A dev tool run by Procfile.dev, so it reads its settings straight from the environment
(scripts/dev.sh exports them from .env). It blocks until SIGTERM/SIGINT, then stops cleanly.
Everything lives in memory: a restart starts from an empty bucket.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType
from urllib.parse import urlsplit

import boto3
from moto.server import ThreadedMotoServer

HOST = "127.0.0.1"


def port_is_free(host: str, port: int) -> bool:
    """ThreadedMotoServer.start() waits forever if its server thread cannot bind, so check first
    (with SO_REUSEADDR, as werkzeug binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_bucket(endpoint: str, bucket: str, region: str, timeout: float = 30.0) -> None:
    """Create the bucket once the server answers (idempotent: an existing bucket is kept)."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or "local-dummy-key",
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or "local-dummy-secret",
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    if bucket in existing:
        return
    if region == "us-east-1":  # S3 refuses an explicit us-east-1 LocationConstraint
        client.create_bucket(Bucket=bucket)
    else:
        client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
        )


def main() -> int:
    port = int(os.environ.get("S3_PORT", "9000"))
    bucket = os.environ.get("S3_BUCKET", "yousync-audio")
    region = os.environ.get("AWS_REGION", "us-east-1")
    local_endpoint = f"http://{HOST}:{port}"
    endpoint = os.environ.get("S3_ENDPOINT_URL") or local_endpoint

    # The app talks to S3_ENDPOINT_URL; if that is not this server, uploads would go elsewhere.
    target = urlsplit(endpoint)
    if target.hostname not in (HOST, "localhost") or (target.port or 80) != port:
        print(
            f"local_s3: warning: S3_ENDPOINT_URL={endpoint} is not this server ({local_endpoint});"
            " the bucket is created here, the app will use the other one",
            flush=True,
        )

    if not port_is_free(HOST, port):
        print(f"local_s3: port {port} is in use; set S3_PORT to a free one", file=sys.stderr)
        return 1

    # Per-request werkzeug logs drown the other processes' output; LOCAL_S3_VERBOSE=1 keeps them.
    if not os.environ.get("LOCAL_S3_VERBOSE"):
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    try:
        ensure_bucket(local_endpoint, bucket, region)
        print(f"local_s3: moto S3 at {local_endpoint}, bucket {bucket!r} ready", flush=True)
        # A timed wait keeps the main thread responsive to signals.
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        print("local_s3: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
