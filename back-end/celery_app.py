"""`celery -A celery_app worker|beat|flower|inspect` from back-end/, as the seed runs it: the
worker's app lives in yousync.worker.celery_app (Celery looks for `app` or `celery_app`)."""

from yousync.worker.celery_app import app, celery_app

__all__ = ["app", "celery_app"]
