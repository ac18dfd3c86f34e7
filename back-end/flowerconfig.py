"""Flower's configuration, read by `celery -A celery_app flower` from this directory.

Flower executes this file and takes every top-level name that matches one of its options, so
only option names live at the top level (an `import logging` here would set Flower's `logging`
option). Precedence: command line > this file > FLOWER_* environment variables.

Basic auth comes from the settings (FLOWER_BASIC_AUTH, environment then ../.env), so a bare
`celery -A celery_app flower` is never open; Flower 2 also refuses its HTTP API without it.
"""


def _basic_auth() -> list[str]:
    import sys

    from tornado.options import options

    from yousync.core.config import get_settings

    configured = get_settings().flower_basic_auth
    if configured:
        return [entry.strip() for entry in configured.split(",") if entry.strip()]
    # On the command line (parsed before this file), or FLOWER_BASIC_AUTH read by Flower itself.
    given = [entry for entry in getattr(options, "basic_auth", None) or () if entry]
    if given:
        return given
    sys.exit("flower: set FLOWER_BASIC_AUTH=user:password (or --basic-auth); refusing to run open")


basic_auth = _basic_auth()
