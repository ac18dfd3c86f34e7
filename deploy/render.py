"""Render the deploy templates (`deploy/**/*.in`) for one host: `python -m deploy.render OUT`.

Templates say `@NAME@` where a host-specific value goes: this checkout's paths, ports, the
proxy's address and limits derived from the settings (the upload ceiling, the ping interval).
`@NAME@` rather than `$NAME` or `{NAME}` because nginx configs are full of `$variables` and
systemd units of `${VARIABLES}` and `%specifiers`, which must pass through untouched.

A template naming a value nobody defined is an error, not an empty string: a unit rendered with
a blank path would only fail on the host, at start.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pwd
import re
import resource
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yousync.api.errors import error_response
from yousync.api.uploads.receive import too_large
from yousync.core.config import HOME_DIR, Settings, get_settings

DEPLOY_DIR = Path(__file__).resolve().parent
TEMPLATE_SUFFIX = ".in"
_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


class RenderError(ValueError):
    """A template names a value the topology does not define."""


def current_user() -> str:
    """Who runs this: the default user of everything rendered for this machine's own runs."""
    return pwd.getpwuid(os.geteuid()).pw_name


def settings_from(env: Mapping[str, str]) -> Settings:
    """The settings the processes started with `env` will read (then `.env`), so what the
    templates derive from them (body limit, 413 body, read timeout) matches those processes."""
    values: dict[str, Any] = {name.lower(): value for name, value in env.items()}
    return Settings(**values)


def _nofile_limit() -> int:
    """What nginx-local.conf may raise its workers' descriptor limit to on this machine: the
    hard limit (only root may go past it), capped at 65536 (4,000 streams need 8,000)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)


@dataclass(frozen=True)
class Topology:
    """Everything the templates may name, with the defaults of one production host.

    Field names are the placeholders (`api_port` is `@API_PORT@`). Paths default to this
    checkout, so units rendered here point at executables that exist (systemd-analyze verify
    checks that); a real host passes its own (README "Deploying").
    """

    home: Path = HOME_DIR
    # The executables' directory; None: `home`'s .venv/bin.
    venv_bin: Path | None = None
    # Where the running topology keeps its state: nginx's logs and temp dirs, Redis' data.
    run_dir: Path = Path("/var/lib/yousync")
    # The settings file every unit reads (systemd EnvironmentFile=).
    env_file: Path = Path("/etc/yousync/yousync.env")
    user: str = "yousync"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_processes: int = 2
    # The API processes' prometheus-client multiprocess directory (PROMETHEUS_MULTIPROC_DIR):
    # the unit's RuntimeDirectory=, which systemd empties at every start. Only make prod-local
    # (no systemd) points it elsewhere.
    api_metrics_dir: Path = Path("/run/yousync-api")
    # The address nginx connects to the API from (proxy_bind), the only one whose
    # X-Forwarded-For the API trusts (uvicorn --forwarded-allow-ips).
    proxy_addr: str = "127.0.0.1"
    proxy_listen: str = "0.0.0.0:80"
    # The site's access log (Debian's log directory; nginx-local's runs put it in RUN_DIR).
    nginx_log_dir: Path = Path("/var/log/nginx")
    # How long a client may take to send its request headers.
    client_header_timeout: str = "10s"
    # nginx-local.conf only (tests, benchmarks, `make prod-local`): its workers' user and
    # descriptor limit, those of whoever renders it on the machine that runs it.
    local_user: str = field(default_factory=current_user)
    nginx_nofile: int = field(default_factory=_nofile_limit)
    flower_port: int = 5555
    analysis_port: int = 8001
    analysis_processes: int = 2
    worker_concurrency: int = 2
    # The seed's --max-memory-per-child (KiB): a prefork child past it is replaced after its
    # current task.
    worker_max_memory_kib: int = 300000
    redis_port: int = 6379
    nginx: Path = Path("/usr/sbin/nginx")
    extra: Mapping[str, str] = field(default_factory=dict)

    def values(self, settings: Settings | None = None) -> dict[str, str]:
        """Placeholder name → text, including the limits nginx derives from the settings."""
        settings = settings or get_settings()
        values = {
            name.upper(): str(value) for name, value in asdict(self).items() if name != "extra"
        }
        values["VENV_BIN"] = str(self.venv_bin or self.home / ".venv" / "bin")
        values["BACK_END"] = str(self.home / "back-end")
        values["ANALYSIS_DIR"] = str(self.home / "analysis-server")
        values.update(derived_values(settings))
        values.update({name.upper(): text for name, text in self.extra.items()})
        return values


def derived_values(settings: Settings) -> dict[str, str]:
    """Values that follow from the settings, so the proxy and the API cannot disagree."""
    return {
        # A multipart body carries the file plus its part headers: the proxy admits a little
        # more than MAX_UPLOAD_MB and lets the API answer its own 413 for the file itself.
        "CLIENT_MAX_BODY_SIZE": f"{math.ceil(settings.max_upload_mb) + 1}m",
        "SSE_PING_SECONDS": f"{settings.sse_ping_seconds:g}",
        # A graceful worker stop waits for running tasks, which end by the hard time limit.
        "WORKER_STOP_TIMEOUT": f"{settings.task_time_limit + 60}s",
        # Must exceed the ping interval, or the proxy cuts idle-looking streams.
        "PROXY_READ_TIMEOUT": f"{max(60, math.ceil(settings.sse_ping_seconds * 4))}s",
        # What nginx answers to a Content-Length past CLIENT_MAX_BODY_SIZE: the API's own 413.
        "FILE_TOO_LARGE_BODY": nginx_string(file_too_large_body(settings)),
    }


def file_too_large_body(settings: Settings) -> str:
    """The body of the API's 413 for a file over MAX_UPLOAD_MB, byte for byte: made by the
    function the upload handler raises and the response the API answers it with, so the proxy's
    answer and the API's cannot drift apart."""
    rejection = too_large(settings.max_upload_bytes)
    return bytes(error_response(rejection.status, rejection.code, rejection.detail).body).decode()


def nginx_string(text: str) -> str:
    """`text` as one single-quoted nginx argument. `$` is refused: nginx would read it as a
    variable in `return`, and its config syntax has no escape for it."""
    if "$" in text:
        raise RenderError(f"nginx cannot quote a literal $: {text!r}")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_text(text: str, values: Mapping[str, str], *, source: str = "<template>") -> str:
    missing = sorted({name for name in _PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise RenderError(f"{source}: no value for {', '.join('@' + m + '@' for m in missing)}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def templates(root: Path = DEPLOY_DIR) -> list[Path]:
    return sorted(path for path in root.rglob(f"*{TEMPLATE_SUFFIX}") if path.is_file())


def render_tree(out_dir: Path, values: Mapping[str, str], root: Path = DEPLOY_DIR) -> list[Path]:
    """Render every template under `root` into `out_dir`, keeping relative paths minus `.in`."""
    written = []
    for template in templates(root):
        relative = template.relative_to(root)
        target = out_dir / relative.with_name(relative.name.removesuffix(TEMPLATE_SUFFIX))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_text(template.read_text(), values, source=str(relative)))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a value (e.g. --set API_PROCESSES=4 --set RUN_DIR=/srv/yousync)",
    )
    args = parser.parse_args(argv)
    # A field's override feeds what is derived from it (HOME → BACK_END); any other name
    # replaces the value whatever made it (a derived limit).
    fields = {item.name: item for item in dataclasses.fields(Topology) if item.name != "extra"}
    chosen: dict[str, Any] = {}
    extra = {}
    for name, value in (item.split("=", 1) for item in args.set):
        known = fields.get(name.lower())
        if known is None:
            extra[name] = value
        else:
            chosen[known.name] = Path(value) if "Path" in str(known.type) else value
    for path in render_tree(args.out_dir, Topology(**chosen, extra=extra).values()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
