"""Every shell command in a code block of README.md and CELERY_GUIDE.md is checked by running it.

A small parser reads the docs' fenced code blocks. In a `bash`/`sh`/`shell` block every line is
a command (continuations joined, comments and `$ ` prompts dropped); in a `console` block only
the `$ ` lines are; in an unlabelled block a line is a command when its first word (after any
`VAR=value`) is an executable here — so the folder tree and the `ts=… level=info …` log sample
are not. A `cd DIR` line is no command of its own: it sets, from the repository root, where the
block's next commands run. A block in any other language (the README's EventSource snippet) is
one snippet.

`test_every_documented_command_is_run_covered_or_excluded` then holds the docs to account: each
command or snippet is run by a test of this file (`@runs`), or run word for word by
tests/back_end/test_celery_app.py (COVERED_BY_CELERY_APP_TESTS, checked against that file's
source), or listed in EXCLUDED with its reason. A command added to the docs without a check, or a
check whose command left the docs, fails the suite.

The tests run the documented text itself through bash against the test stack, changing only
what ties it to the developer's machine — host and port, `<job_id>` → a real job, `audio.wav` → a
real WAV in the test's directory, `../.venv/bin/` → this interpreter's venv when that is
elsewhere, Beat's schedule file → the test's directory — each substitution asserted to apply, so
a changed doc command cannot silently stop matching. Two things are only added, to observe:
`--write-out` (the upload's HTTP status) and a timeout around every command. `make dev` runs as
the README says to move it (`API_PORT=… make dev`), with every port free and a Redis of its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from celery import Celery

from devtools import stack
from devtools.prod_local import read_env_file
from tests.helpers import sse
from tests.helpers.audio import wav_bytes
from yousync.worker.celery_app import MAINTENANCE_TASKS

ROOT = stack.REPO_ROOT
DOCS = ("README.md", "CELERY_GUIDE.md")
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console", ""})
# Shell words that are commands without being files on PATH.
SHELL_BUILTINS = frozenset({"cd", ".", "source", "export", "set", "echo", "exec"})
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
VENV_PREFIX = "../.venv/bin/"


# --- the parser --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocItem:
    """One command of a shell block, or one whole snippet of another language."""

    doc: str
    line: int  # 1-based line of the command's first line
    language: str
    cwd: str  # relative to the repository root: where the block's `cd` left it
    text: str

    @property
    def key(self) -> str:
        if self.language in SHELL_LANGUAGES:
            return self.text
        return f"{self.language}: {self.text.splitlines()[0]}"


def strip_comment(line: str) -> str:
    """`line` without its shell comment (a `#` outside quotes, at the start or after a blank)."""
    quote: str | None = None
    i = 0
    while i < len(line):
        char = line[i]
        if quote == '"' and char == "\\":
            i += 2
            continue
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


def words_of(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # prose with an apostrophe
        return line.split()


def first_word(line: str) -> str | None:
    """The command word: the first that is not a `VAR=value` assignment."""
    return next((w for w in words_of(line) if not ASSIGNMENT.match(w)), None)


def is_executable(word: str, cwd: str) -> bool:
    if word in SHELL_BUILTINS:
        return True
    if "/" in word:
        path = ROOT / cwd / word
        return path.is_file() and os.access(path, os.X_OK)
    return shutil.which(word) is not None or (stack.BIN / word).is_file()


def logical_lines(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Joins `\\` continuations (a comment line never continues)."""
    pending: tuple[int, str] | None = None
    for number, raw in lines:
        if pending is not None:
            start, text = pending
            raw = text + " " + raw.strip()
            number = start
            pending = None
        if raw.rstrip().endswith("\\") and not raw.lstrip().startswith("#"):
            pending = (number, raw.rstrip()[:-1].rstrip())
            continue
        yield number, raw
    if pending is not None:
        yield pending


def block_commands(doc: str, language: str, lines: list[tuple[int, str]]) -> Iterator[DocItem]:
    cwd = "."
    console = language == "console"
    for number, raw in logical_lines(lines):
        line = raw.strip()
        prompted = line.startswith("$ ")
        if prompted:
            line = line[2:]
        elif console:
            continue  # output
        line = strip_comment(line).strip()
        if not line:
            continue
        word = first_word(line)
        if language == "" and (word is None or not is_executable(word, cwd)):
            continue  # a tree, a log sample, output
        words = words_of(line)
        if words[0] == "cd" and len(words) == 2:
            cwd = words[1].rstrip("/") or "."  # each `cd` from the repository root
            continue
        yield DocItem(doc, number, language, cwd, " ".join(line.split()))


def parse_markdown(text: str, doc: str) -> list[DocItem]:
    """The commands and snippets of every fenced code block of a Markdown text."""
    items: list[DocItem] = []
    language: str | None = None
    body: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if language is None:
            if stripped.startswith("```"):
                language = stripped[3:].strip().split(" ")[0].lower()
                body = []
            continue
        if stripped == "```":
            if language in SHELL_LANGUAGES:
                items.extend(block_commands(doc, language, body))
            elif any(text.strip() for _, text in body):
                snippet = "\n".join(text for _, text in body).strip("\n")
                items.append(DocItem(doc, body[0][0], language, ".", snippet))
            language = None
            continue
        body.append((number, line))
    if language is not None:
        raise ValueError(f"{doc}: a code block is never closed")
    return items


def documented_items() -> list[DocItem]:
    return [item for doc in DOCS for item in parse_markdown((ROOT / doc).read_text(), doc)]


def documented(key: str) -> DocItem:
    """The docs' command (or snippet) with this key; one place to run it from."""
    found = [item for item in documented_items() if item.key == key]
    assert found, f"no longer in {' or '.join(DOCS)}: {key!r}"
    assert len({item.cwd for item in found}) == 1, f"documented with different `cd`s: {found}"
    return found[0]


# --- how each command is checked ---------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])
RUN_HERE: dict[str, str] = {}  # command key → the test of this file that runs it


def runs(*keys: str) -> Callable[[F], F]:
    """Declares the documented commands a test runs (it fetches each with `documented`)."""

    def register(test: F) -> F:
        for key in keys:
            assert key not in RUN_HERE, f"{key!r} is run by {RUN_HERE[key]} already"
            RUN_HERE[key] = test.__name__
        return test

    return register


# The seed's commands, which tests/back_end/test_celery_app.py runs word for word from back-end/
# (its `seed_proc`/`seed_server`) → the literal it runs, with `{port}` for the port.
COVERED_BY_CELERY_APP_TESTS = {
    "../.venv/bin/celery -A celery_app worker --loglevel=info --queue=audio_queue": (
        "celery -A celery_app worker --loglevel=info --queue=audio_queue"
    ),
    "../.venv/bin/uvicorn main:app --reload --host 0.0.0.0 --port 8000": (
        "uvicorn main:app --reload --host 0.0.0.0 --port {port}"
    ),
    "../.venv/bin/celery -A celery_app flower --port=5555": (
        "celery -A celery_app flower --port={port}"
    ),
}

EXCLUDED = {
    "make test": (
        "the suite itself, this file included: run from a test it would recurse. CI runs it "
        "(.ci/run: `make lint`, then `exec make test`)."
    ),
    "javascript: source.onerror = () => {": (
        "a fragment of the progress page's reconnect logic (source, backoff, reopen come from "
        "the page); the page itself is driven through a real 503 by test_pages.py's "
        "test_page_when_stream_answers_503_while_redis_is_down_then_page_retries_and_finishes_by_itself."
    ),
    "sudo apt-get install -y redis-server ffmpeg": (
        "changes the machine (root, Debian packages). `make setup` (scripts/"
        "ensure_system_deps.sh) installs the same packages when their command is missing, and "
        "every test here runs on them."
    ),
}

# README: quick start and the seed's curl examples.
MAKE_DEV = "make dev"
MAKE_PROD_LOCAL = "make prod-local"
UPLOAD = 'curl -X POST "http://localhost:8000/tokens/test123/upload-audio" -F "file=@audio.wav"'
RESULT = 'curl "http://localhost:8000/tokens/analysis-result/<job_id>"'
RESULT_WAIT = 'curl "http://localhost:8000/tokens/analysis-result/<job_id>?wait=30"'
PROGRESS = 'curl -N "http://localhost:8000/tokens/analysis-progress/<job_id>"'
EVENTSOURCE = (
    "javascript: const eventSource = new EventSource("
    "'http://localhost:8000/tokens/analysis-progress/<job_id>');"
)
# CELERY_GUIDE: §1, §2, §4.
REDIS_PING = "redis-cli ping"
ANALYSIS_SERVER = "../.venv/bin/uvicorn analysis_server.app:app --port 8001"
BEAT = (
    "../.venv/bin/celery -A celery_app beat --loglevel=info "
    "--scheduler=yousync.worker.beat_scheduler:SingleBeatScheduler "
    "--schedule=../var/celerybeat-schedule"
)
SCALE_OUT_WORKER = (
    "celery -A celery_app worker --queues=audio_queue --concurrency=2 --hostname=w2@%h -E"
)

CELERY_APP_TESTS = ROOT / "tests" / "back_end" / "test_celery_app.py"
API = "http://localhost:8000"


# --- running a documented command --------------------------------------------------------------


def substituted(text: str, replacements: Mapping[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the documented {text!r}"
        text = text.replace(old, new)
    return text


def with_venv(item: DocItem) -> str:
    """`../.venv/bin/` as written when it is this interpreter's venv, else that venv."""
    if (
        VENV_PREFIX in item.text
        and (ROOT / item.cwd / VENV_PREFIX).resolve() != stack.BIN.resolve()
    ):
        return item.text.replace(VENV_PREFIX, f"{stack.BIN}/")
    return item.text


def shell_env(base: Mapping[str, str]) -> dict[str, str]:
    """The service environment with the venv activated (the docs' bare `celery`, `uvicorn`)."""
    return stack.service_env(base, PATH=f"{stack.BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def run_shell(
    text: str, cwd: Path, env: Mapping[str, str], *, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """A command that ends by itself, through bash as typed (bounded by `timeout`)."""
    return subprocess.run(
        ["bash", "-c", text],
        cwd=cwd,
        env=shell_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def shell_proc(
    text: str, cwd: Path, env: Mapping[str, str], log_dir: Path, name: str, **ready: Any
) -> stack.Proc:
    """A command that runs until stopped, through bash as typed, logging to `log_dir`."""
    return stack.Proc(
        name=name,
        argv=["bash", "-c", f"exec {text}"],
        env=shell_env(env),
        cwd=cwd,
        log_path=log_dir / f"{name}.log",
        **ready,
    )


def port_of(proc: stack.Proc) -> str:
    return proc.name.split(":")[1]


@pytest.fixture
def curl() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.skip("curl is not installed (Debian: apt-get install curl)")
    return found


# --- the parser, and the docs held to account --------------------------------------------------


def test_parser_when_blocks_mix_commands_output_and_snippets_then_finds_only_commands() -> None:
    markdown = "\n".join(
        [
            "Prose with `make dev` inline is not a block.",
            "```bash",
            "# a comment",
            "make dev    # trailing comment",
            'curl -X POST "http://h/#frag" \\',
            '  -F "file=@a.wav"',
            "cd back-end",
            "../.venv/bin/celery -A celery_app beat",
            "",
            "$ redis-cli ping",
            "```",
            "```console",
            "$ redis-cli ping",
            "PONG",
            "```",
            "```",
            "ts=… level=info service=api msg=request status=202",
            'ts=… level=info msg="stage finished" job_id=4f1c…',
            "back-end/            package yousync: the seed's commands",
            "LOG_FORMAT=json make dev",
            "```",
            "```javascript",
            "const a = 1;",
            "console.log(a);",
            "```",
        ]
    )

    items = parse_markdown(markdown, "X.md")

    assert [(i.language, i.cwd, i.text, i.line) for i in items] == [
        ("bash", ".", "make dev", 4),
        ("bash", ".", 'curl -X POST "http://h/#frag" -F "file=@a.wav"', 5),
        ("bash", "back-end", "../.venv/bin/celery -A celery_app beat", 8),
        ("bash", "back-end", "redis-cli ping", 10),
        ("console", ".", "redis-cli ping", 13),
        ("", ".", "LOG_FORMAT=json make dev", 20),
        ("javascript", ".", "const a = 1;\nconsole.log(a);", 23),
    ]
    assert items[-1].key == "javascript: const a = 1;"


def test_every_documented_command_is_run_covered_or_excluded() -> None:
    documented_keys = {item.key for item in documented_items()}
    ways = [set(RUN_HERE), set(COVERED_BY_CELERY_APP_TESTS), set(EXCLUDED)]
    for i, first in enumerate(ways):
        for second in ways[i + 1 :]:
            assert not first & second, f"claimed twice: {first & second}"
    claimed = set().union(*ways)

    unchecked = sorted(documented_keys - claimed)
    assert not unchecked, (
        "documented but neither run by a test nor excluded with a reason "
        f"(tests/back_end/test_docs_commands.py): {unchecked}"
    )
    stale = sorted(claimed - documented_keys)
    assert not stale, f"checked here but no longer in the docs: {stale}"
    assert all(len(reason) > 40 for reason in EXCLUDED.values())


def test_every_documented_cd_names_a_folder_of_the_repository() -> None:
    for item in documented_items():
        assert (ROOT / item.cwd).is_dir(), f"{item.doc}:{item.line}: no folder {item.cwd!r}"


def test_seed_commands_when_documented_then_test_celery_app_still_runs_them_from_back_end() -> None:
    source = CELERY_APP_TESTS.read_text()
    assert "cwd=stack.BACK_END" in source  # where its seed_proc runs them
    for key, literal in COVERED_BY_CELERY_APP_TESTS.items():
        item = documented(key)
        assert item.cwd == "back-end", item
        as_run = re.sub(r"(--port[ =])\d+", r"\1{port}", item.text.removeprefix(VENV_PREFIX))
        assert as_run == literal, (item, literal)
        assert re.search(rf'seed_(proc|server)\(\s*"{re.escape(literal)}"', source), (
            f"{CELERY_APP_TESTS.name} no longer runs {literal!r}"
        )


# --- README: the seed's curl examples and its EventSource snippet ------------------------------


def documented_upload_answer() -> dict[str, str]:
    """The 202 body the README shows under the upload command (its `# {…}` comment lines)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(UPLOAD))
    sample = ""
    for line in lines[start + 1 :]:
        if not line.startswith("#"):
            break
        content = line[1:].strip()
        if sample or content.startswith("{"):
            sample += content
    return dict(json.loads(sample))


def matches_documented(value: object, documented_value: str) -> bool:
    """`…` in the README stands for any non-empty text."""
    pattern = ".+".join(re.escape(part) for part in documented_value.split("…"))
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


def at(api_url: str, key: str, job_id: str | None = None) -> str:
    """A README curl command against the test API (and a real job)."""
    text = substituted(documented(key).text, {API: api_url})
    return substituted(text, {"<job_id>": job_id}) if job_id else text


def upload_take(api_url: str, freq: float) -> dict[str, Any]:
    response = httpx.post(
        f"{api_url}/tokens/test123/upload-audio",
        files={"file": ("take.wav", wav_bytes(1.0, freq=freq), "audio/wav")},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


CALLBACK_RECEIVER = "python: import base64, hashlib, hmac, time"


@runs(CALLBACK_RECEIVER)
def test_readme_callback_receiver_snippet_when_run_then_accepts_ours_and_refuses_tampering() -> (
    None
):
    """The README's stand-alone verifier accepts what the sender signs (yousync.core.webhooks,
    two secrets as during a rotation) with either secret, and refuses a changed body, another
    secret and an old timestamp."""
    import base64
    import time

    from yousync.core import webhooks

    namespace: dict[str, Any] = {}
    exec(documented(CALLBACK_RECEIVER).text, namespace)
    verify_callback = namespace["verify_callback"]
    new, old = (f"whsec_{base64.b64encode(key).decode()}" for key in (b"new-key", b"old-key"))
    body = b'{"job_id":"j","status":"completed"}'
    headers = webhooks.headers([new, old], "j.1", body)
    verify_callback(new, headers, body)
    verify_callback(old, headers, body)
    other = f"whsec_{base64.b64encode(b'other').decode()}"
    stale = webhooks.headers([new], "j.1", body, timestamp=int(time.time()) - 3600)
    for secret, sent, content in (
        (new, headers, body.replace(b"completed", b"failed")),
        (other, headers, body),
        (new, stale, body),
    ):
        with pytest.raises(ValueError):
            verify_callback(secret, sent, content)


@runs(UPLOAD, RESULT, RESULT_WAIT)
def test_readme_curl_when_uploading_then_202_with_documented_fields_and_result_when_finished(
    pipeline: str, curl: str, tmp_path: Path
) -> None:
    (tmp_path / "audio.wav").write_bytes(wav_bytes(1.0, freq=523.0))
    # Only observed: curl prints the HTTP status after the body.
    upload = run_shell(at(pipeline, UPLOAD) + ' --write-out "\\n%{http_code}"', tmp_path, {})
    assert upload.returncode == 0, upload.stderr
    body_text, _, status = upload.stdout.rpartition("\n")
    assert status == "202", upload.stdout
    body = json.loads(body_text)
    for field, documented_value in documented_upload_answer().items():
        assert matches_documented(body.get(field), documented_value), (field, body)
    job_id = body["job_id"]
    assert body["progress_url"].endswith(job_id) and body["result_url"].endswith(job_id)

    current = run_shell(at(pipeline, RESULT, job_id), tmp_path, {})
    assert current.returncode == 0, current.stderr
    state = json.loads(current.stdout)
    assert state["job_id"] == job_id and state["token_id"] == "test123"
    assert state["status"] in {"queued", "processing", "completed"}

    waited = run_shell(at(pipeline, RESULT_WAIT, job_id), tmp_path, {}, timeout=45)
    assert waited.returncode == 0, waited.stderr
    final = json.loads(waited.stdout)
    assert (final["status"], final["progress"], final["stage"]) == ("completed", 100, "done")
    assert final["result"] and final["s3_url"]


@runs(PROGRESS)
def test_readme_curl_n_when_job_runs_then_streams_every_snapshot_until_the_final_event(
    pipeline: str, curl: str, tmp_path: Path
) -> None:
    job_id = upload_take(pipeline, freq=587.0)["job_id"]

    # curl -N returns once the server ends the stream after the final event (bounded here).
    streamed = run_shell(at(pipeline, PROGRESS, job_id), tmp_path, {}, timeout=60)

    assert streamed.returncode == 0, streamed.stderr
    events = list(sse.parse_lines(iter(streamed.stdout.splitlines())))
    assert len(events) >= 2, streamed.stdout  # it was running: more than one snapshot
    snapshots = [event.json for event in events]
    assert all(event.id for event in events)
    assert {s["job_id"] for s in snapshots} == {job_id}
    progress = [s["progress"] for s in snapshots]
    assert progress == sorted(progress)
    assert (snapshots[-1]["status"], progress[-1]) == ("completed", 100)


CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))


@runs(EVENTSOURCE)
def test_readme_eventsource_snippet_when_run_in_chromium_then_logs_progress_and_the_result(
    pipeline: str,
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (`make test` installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    job_id = upload_take(pipeline, freq=659.0)["job_id"]
    snippet = substituted(documented(EVENTSOURCE).text, {API: pipeline, "<job_id>": job_id})

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{pipeline}/healthz")  # the API's origin, as the page's own script has
            logged: list[str] = []
            page.on("console", lambda message: logged.append(message.text))
            with page.expect_console_message(
                lambda message: message.text.startswith("완료!"), timeout=30_000
            ) as done:
                page.add_script_tag(content=snippet)  # the snippet as a page script, verbatim
            result = done.value.args[1].json_value()
            closed = page.evaluate("eventSource.readyState === EventSource.CLOSED")
        finally:
            browser.close()

    lines = [text for text in logged if re.fullmatch(r"\d+% - .+", text)]
    assert lines and lines[-1].startswith("100% - "), logged
    percents = [int(text.split("%")[0]) for text in lines]
    assert percents == sorted(percents)
    assert isinstance(result, dict) and result, result
    assert closed


# --- CELERY_GUIDE: Redis, the analysis server, Beat, a second worker ---------------------------


@runs(REDIS_PING)
def test_celery_guide_redis_cli_ping_when_redis_runs_then_answers_pong(
    redis_service: stack.Proc,
) -> None:
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed (Debian's redis-server ships it)")
    item = documented(REDIS_PING)
    text = substituted(item.text, {"redis-cli": f"redis-cli -p {port_of(redis_service)}"})

    result = run_shell(text, ROOT / item.cwd, {}, timeout=10)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "PONG"


@runs(ANALYSIS_SERVER)
def test_celery_guide_analysis_server_command_when_run_then_serves_behind_its_secret(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    item = documented(ANALYSIS_SERVER)
    assert item.cwd == "analysis-server"
    port = stack.free_port()
    base = f"http://127.0.0.1:{port}"
    text = substituted(with_venv(item), {"--port 8001": f"--port {port}"})
    server = shell_proc(
        text,
        ROOT / item.cwd,
        stack_env,
        tmp_path,
        "analysis",
        ready=lambda: stack.http_ok(f"{base}/healthz"),
    )
    try:
        server.start()
        anonymous = httpx.get(f"{base}/readyz", timeout=10)
        secret = {"Authorization": f"Bearer {stack_env['ANALYSIS_SHARED_SECRET']}"}
        ready = httpx.get(f"{base}/readyz", headers=secret, timeout=10)
    finally:
        server.stop()

    assert anonymous.status_code == 401
    assert ready.status_code == 200, ready.text


@runs(BEAT)
def test_celery_guide_beat_command_when_run_then_sends_the_three_sweeps_until_stopped(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    item = documented(BEAT)
    assert item.cwd == "back-end"
    schedule = tmp_path / "celerybeat-schedule"
    # The repository's var/ belongs to `make dev`'s Beat: a second Beat must not share its file.
    text = substituted(
        with_venv(item), {"--schedule=../var/celerybeat-schedule": f"--schedule={schedule}"}
    )
    env = {**backend_env, "MAINTENANCE_INTERVAL_SECONDS": "1"}
    log = tmp_path / "beat.log"
    beat = shell_proc(
        text,
        ROOT / item.cwd,
        env,
        tmp_path,
        "beat",
        ready=lambda: "beat: Starting" in log.read_text(errors="replace"),
    )
    sweeps = MAINTENANCE_TASKS
    try:
        beat.start()
        stack.wait_until(
            lambda: all(f"Sending due task {s}" in log.read_text() for s in sweeps),
            timeout=20,
            what="Beat sending every sweep",
        )
    finally:
        beat.stop()

    assert beat.popen is not None and beat.popen.returncode == 0, beat.log_tail()
    assert list(tmp_path.glob("celerybeat-schedule*")), "no schedule file where --schedule says"
    assert "Traceback" not in log.read_text()


@runs(SCALE_OUT_WORKER)
def test_celery_guide_second_worker_when_started_then_answers_ping_and_takes_a_job(
    backend_env: dict[str, str],
    redis_service: stack.Proc,
    analysis_service: stack.Proc,
    workdir: Path,
    tmp_path: Path,
    token_id: str,
) -> None:
    item = documented(SCALE_OUT_WORKER)
    assert item.cwd == "back-end"
    # A broker of its own (another db of the test Redis) with an API publishing to it, so the
    # session's worker w1 cannot take the job; job state, S3, spool and analysis are shared.
    marker = tmp_path / "w2.ready"
    w2 = f"w2@{socket.gethostname()}"
    env = {
        **backend_env,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{port_of(redis_service)}/7",
        "YOUSYNC_WORKER_READY_FILE": str(marker),
    }
    worker = shell_proc(
        item.text, ROOT / item.cwd, env, tmp_path, "w2", ready=marker.exists, ready_timeout=60.0
    )
    api = stack.api_proc(env, workdir)
    try:
        with ThreadPoolExecutor(2) as pool:  # both at once: each takes seconds to be ready
            list(pool.map(stack.Proc.start, (worker, api)))
        ping = run_shell("celery -A celery_app inspect ping", ROOT / item.cwd, env)
        body = httpx.post(
            f"http://127.0.0.1:{port_of(api)}/tokens/{token_id}/upload-audio",
            files={"file": ("take.wav", wav_bytes(1.0), "audio/wav")},
            timeout=30,
        ).json()
        done = httpx.get(
            f"http://127.0.0.1:{port_of(api)}{body['result_url']}?wait=30", timeout=40
        ).json()
        # The documented command logs at WARNING: the worker's own counters say who ran it.
        client = Celery("docs-test", broker=env["CELERY_BROKER_URL"])
        try:
            inspect = client.control.inspect(destination=[w2], timeout=10)
            stats, queues = inspect.stats(), inspect.active_queues()
        finally:
            client.close()
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(stack.Proc.stop, (api, worker)))

    assert ping.returncode == 0, ping.stderr
    assert f"{w2}: OK" in ping.stdout  # `%h` expanded
    assert done["status"] == "completed", done
    assert stats[w2]["total"] == {"tasks.audio_tasks.analyze_audio": 1}
    assert [queue["name"] for queue in queues[w2]] == ["audio_queue"]
    banner = worker.log_path.read_text()
    assert "concurrency: 2 (prefork)" in banner and "task events: ON" in banner


# --- README: make dev --------------------------------------------------------------------------


def missing_for_make_setup() -> str | None:
    """Why `make dev` would change this machine before running (its `make setup` step)."""
    if shutil.which("make") is None:
        return "make is not installed"
    if (ROOT / ".venv" / "bin").resolve() != stack.BIN.resolve():
        return f"the suite runs from {stack.BIN}, not the repository's .venv that make dev uses"
    stale = subprocess.run(
        ["make", "-q", ".venv/.requirements.stamp"], cwd=ROOT, capture_output=True, timeout=30
    )
    if stale.returncode != 0:
        return "make dev would pip-install first: requirements changed since `make setup`"
    script = (ROOT / "scripts" / "ensure_system_deps.sh").read_text()
    services = re.search(r"^\s*services\)\n(.*?)^\s*;;", script, re.M | re.S)
    assert services, "scripts/ensure_system_deps.sh has no services group"
    missing = [c for c in re.findall(r"need_cmd (\S+)", services[1]) if not shutil.which(c)]
    if missing:
        return f"make dev would apt-get install {missing} first"
    return None


def refuses(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def fresh_shell_env(**extra: str) -> dict[str, str]:
    """A fresh shell's environment: this one without what `.env` sets, so the make target
    reads `.env`'s defaults as on a developer's machine; `extra` on top."""
    dotenv = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    return {key: value for key, value in os.environ.items() if key not in dotenv} | extra


def start_session(item: DocItem, env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """The documented command through bash, in a process group of its own (as a terminal
    runs it, so Ctrl-C reaches all of it), its output in `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            ["bash", "-c", item.text],
            cwd=ROOT / item.cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_banner(
    proc: subprocess.Popen[bytes], log_path: Path, banner: str, *, timeout: float
) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log_path.read_text()}")
        return banner in log_path.read_text(errors="replace")

    stack.wait_until(ready, timeout=timeout, what=repr(banner))


def ctrl_c(proc: subprocess.Popen[bytes]) -> None:
    """What Ctrl-C in its terminal sends; SIGKILL if that did not stop it in 30 s."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.integration  # no stack fixture: conftest would not mark it
@pytest.mark.timeout(240)  # above the sum of its own bounded waits, which fail more clearly
@runs(MAKE_DEV)
def test_readme_make_dev_when_run_then_whole_stack_serves_a_job_and_ctrl_c_stops_it_all(
    tmp_path: Path,
) -> None:
    reason = missing_for_make_setup()
    if reason:
        pytest.skip(reason)
    item = documented(MAKE_DEV)
    ports = {name: stack.free_port() for name in ("API", "ANALYSIS", "S3", "FLOWER", "REDIS")}
    # A fresh shell's environment: .env's defaults, moved to free ports as the README shows
    # (`API_PORT=18000 make dev`); a Redis of its own, which dev.sh starts. Its Beat keeps its
    # schedule in the checkout's var/ (gitignored), as `make dev` always does.
    env = fresh_shell_env()
    env |= {f"{name}_PORT": str(port) for name, port in ports.items() if name != "REDIS"}
    env |= {
        "REDIS_URL": f"redis://127.0.0.1:{ports['REDIS']}/0",
        "SPOOL_DIR": str(tmp_path / "spool"),
    }
    log_path = tmp_path / "make-dev.log"
    api = f"http://127.0.0.1:{ports['API']}"
    dev = start_session(item, env, log_path)
    try:
        wait_for_banner(dev, log_path, "YouSync local stack is ready", timeout=90)  # ~8 s here
        readyz = httpx.get(f"{api}/readyz", timeout=10)
        job = upload_take(api, freq=698.0)
        done = httpx.get(f"{api}{job['result_url']}?wait=30", timeout=40).json()
    finally:
        ctrl_c(dev)

    out = log_path.read_text(errors="replace")
    assert readyz.status_code == 200, readyz.text
    assert done["status"] == "completed", done
    for process in ("redis", "s3", "analysis", "worker", "beat", "flower", "api", "ready"):
        assert f"{process}.1 stopped" in out, out[-3000:]
    assert all(refuses(port) for port in ports.values()), out[-3000:]


@pytest.mark.integration  # no stack fixture: conftest would not mark it
@pytest.mark.timeout(240)  # above the sum of its own bounded waits, which fail more clearly
@runs(MAKE_PROD_LOCAL)
def test_readme_make_prod_local_when_run_then_serves_a_keyed_job_through_nginx_and_stops_it_all(
    tmp_path: Path,
) -> None:
    """The production topology as `make prod-local` brings it up: only nginx's port is used,
    with the API key the run made; a job's progress streams through the proxy; Flower answers
    under /flower behind its password; Ctrl-C stops every process."""
    reason = missing_for_make_setup()
    if reason:
        pytest.skip(reason)
    item = documented(MAKE_PROD_LOCAL)
    names = ("proxy", "api", "analysis", "s3", "flower", "redis")
    ports = {name: stack.free_port() for name in names}
    run_dir = tmp_path / "prod"
    args = " ".join(f"--{name}-port {port}" for name, port in ports.items())
    env = fresh_shell_env(PROD_LOCAL_ARGS=f"{args} --dir {run_dir}")
    log_path = tmp_path / "prod-local.log"
    base = f"http://127.0.0.1:{ports['proxy']}"
    prod = start_session(item, env, log_path)
    try:
        wait_for_banner(prod, log_path, "production topology (local) is ready", timeout=120)
        secrets = read_env_file(run_dir / "secrets.env")
        key = secrets["API_KEYS"]
        auth = {"Authorization": f"Bearer {key}"}
        unkeyed = httpx.get(f"{base}/readyz", timeout=10)
        readyz = httpx.get(f"{base}/readyz", headers=auth, timeout=10)
        upload = httpx.post(
            f"{base}/tokens/test123/upload-audio",
            headers=auth,
            files={"file": ("take.wav", wav_bytes(1.0, freq=587.0), "audio/wav")},
            timeout=30,
        )
        job = upload.json()
        token = f"?token={job['stream_token']}"
        events = list(sse.stream(f"{base}{job['progress_url']}{token}", timeout=60))
        user, _, password = secrets["FLOWER_BASIC_AUTH"].partition(":")
        flower_open = httpx.get(f"{base}/flower/", timeout=10)
        flower = httpx.get(f"{base}/flower/", auth=(user, password), timeout=10)
        direct_api = refuses(ports["api"])
    finally:
        ctrl_c(prod)

    out = log_path.read_text(errors="replace")
    assert unkeyed.status_code == 401 and readyz.status_code == 200, (unkeyed.text, readyz.text)
    assert upload.status_code == 202, upload.text
    assert events and events[-1].json["status"] == "completed", [e.data for e in events]
    assert flower_open.status_code == 401 and flower.status_code == 200
    assert not direct_api  # the API listens too, on loopback, for nginx
    access_log = (run_dir / "nginx" / "yousync-access.log").read_text()
    assert job["progress_url"] in access_log and job["stream_token"] not in access_log
    settings = read_env_file(run_dir / "yousync.env")
    assert settings["ENVIRONMENT"] == "prod" and settings["API_KEYS"] == key
    assert settings["UPLOAD_STAGING"] == "s3"  # the job above went through S3 staging
    for process in ("redis", "s3", "analysis", "api", "worker", "beat", "flower", "nginx", "ready"):
        assert f"{process}.1 stopped" in out, out[-3000:]
    assert all(refuses(port) for port in ports.values()), out[-3000:]
