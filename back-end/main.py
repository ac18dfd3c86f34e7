"""`uvicorn main:app` from back-end/, as the seed runs it: the API lives in yousync.api.app."""

from yousync.api.app import app

__all__ = ["app"]
