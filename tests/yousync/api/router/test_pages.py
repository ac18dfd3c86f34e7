"""The progress page (`GET /`) in a real browser: Playwright (PyPI) driving Debian's Chromium
against the real stack — upload through the page, the live bar, the rendered result, a dropped
SSE connection (the API process SIGKILLed and restarted mid-job), a Redis outage across an API
restart (the browser's reconnect answered 503, on which a plain EventSource gives up for good,
and the page's own fallback bringing the stream back), Korean labels, the keyboard and a
microphone recording (Chromium's fake audio device).

Screenshots go to tests/artifacts/ (gitignored). `UPDATE_DOCS_SCREENSHOT=1` also copies the
finished page to docs/screenshot.png, the picture in the README.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devtools import stack
from tests.helpers.audio import wav_bytes
from tests.helpers.jobs import create_job, sync_store
from tests.helpers.wait import wait_until
from yousync.core.models import TERMINAL_STATUSES
from yousync.core.stages import Stage

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
REPO_ROOT = Path(__file__).resolve().parents[4]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    # A synthetic microphone (a beep) that needs no permission prompt.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]

# Records every value the analysis bar takes (a MutationObserver sees each attribute change,
# however quickly the next event follows), so the test sees the bar's whole history.
RECORD_BAR = """
window.__bar = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("job-bar");
  new MutationObserver(() => window.__bar.push(bar.value))
    .observe(bar, { attributes: true, attributeFilter: ["value"] });
});
"""


@pytest.fixture(scope="module")
def page_api(backend_env: dict[str, str], workdir: Path) -> Iterator[stack.Proc]:
    """An API process of this module's own, so killing it disturbs no other test."""
    proc = stack.api_proc(backend_env, workdir).start()
    yield proc
    proc.stop()


@pytest.fixture
def base_url(
    page_api: stack.Proc,
    redis_client: redis.Redis,
    worker_service: stack.Proc,
    analysis_service: stack.Proc,
) -> str:
    return f"http://127.0.0.1:{page_api.name.split(':')[1]}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"Debian's chromium is not installed at {CHROMIUM} (`make test` installs it; "
            "by hand: apt-get install chromium)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="en-US", viewport={"width": 900, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.add_init_script(RECORD_BAR)
    yield page
    context.close()


def test_index_when_requested_then_serves_the_page_and_its_assets(base_url: str) -> None:
    page = httpx.get(f"{base_url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assert '<progress id="job-bar"' in page.text and '<progress id="upload-bar"' in page.text
    for asset, needle in [
        ("progress.js", "new EventSource("),
        ("i18n.js", "업로드"),
        ("page.css", "progress"),
    ]:
        response = httpx.get(f"{base_url}/static/{asset}")
        assert response.status_code == 200 and needle in response.text, asset


def test_contract_script_when_requested_then_carries_every_stage_of_the_table(
    base_url: str,
) -> None:
    response = httpx.get(f"{base_url}/contract.js")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    contract = json.loads(response.text.split("const CONTRACT = ", 1)[1].rstrip().rstrip(";"))
    assert [row["name"] for row in contract["stages"]] == [stage.value for stage in Stage]
    for row, stage in zip(contract["stages"], Stage, strict=True):
        assert (row["start"], row["end"], row["labels"]) == (stage.start, stage.end, stage.labels)
    assert set(contract["terminalStatuses"]) == {s.value for s in TERMINAL_STATUSES}
    assert set(contract["streamEndStatuses"]) == {s.value for s in TERMINAL_STATUSES} | {"deleted"}


def upload_through_page(page: Any, base_url: str, token_id: str, seconds: float = 3.0) -> None:
    page.goto(f"{base_url}/")
    page.fill("#token", token_id)
    page.set_input_files(
        "#file",
        files=[{"name": "take.wav", "mimeType": "audio/wav", "buffer": wav_bytes(seconds)}],
    )
    assert "take.wav" in page.inner_text("#chosen")
    page.click("#upload")


def bar_history(page: Any) -> list[float]:
    return [float(value) for value in page.evaluate("window.__bar")]


def assert_climbed_to_100(history: list[float]) -> None:
    assert history == sorted(history), f"the bar went backwards: {history}"
    assert history[-1] == 100, history
    intermediate = {value for value in history if 0 < value < 100}
    assert len(intermediate) >= 3, f"expected intermediate values, saw {history}"


def test_page_when_file_uploaded_then_bar_climbs_to_100_and_result_is_rendered(
    page: Any, base_url: str, token_id: str, analysis_url: str
) -> None:
    # With the token's original line stored, the result also carries a sync score.
    reference = httpx.put(
        f"{analysis_url}/references/{token_id}",
        content=wav_bytes(3.0),
        headers={"Content-Type": "audio/wav"},
        timeout=30,
    )
    upload_through_page(page, base_url, token_id)

    page.wait_for_selector('#job[data-status="completed"]')
    assert_climbed_to_100(bar_history(page))
    assert page.get_attribute("#upload-bar", "value") == "100"
    assert page.inner_text("#job-percent") == "100%"
    bar = page.get_by_role("progressbar", name="Analysis")
    assert bar.get_attribute("aria-valuetext") == "100% — Done"
    assert page.get_attribute("#conn", "data-state") == "done"
    assert page.is_hidden("#cancel") and page.is_hidden("#retry")

    # The result, readable: duration, loudness, pitch of the 440 Hz test tone, quality.
    assert page.is_visible("#result")
    assert page.inner_text('dd[data-field="r.duration"]') == "3 s"
    assert "dBFS" in page.inner_text('dd[data-field="r.loudness"]')
    assert page.inner_text('dd[data-field="r.pitch"]').startswith(("439", "440", "441"))
    assert page.locator("#warnings li").count() >= 1
    if reference.status_code in (200, 201):  # analysis servers without references: no score
        assert page.inner_text('dd[data-field="r.sync"]').endswith(" / 100")
    assert page.is_hidden("#error")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "progress-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        (REPO_ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO_ROOT / "docs" / "screenshot.png")

    # Come back later (new page load): the job is in this browser's recent list.
    page.goto(f"{base_url}/")
    entry = page.locator("#recent-list button").first
    assert "take.wav" in entry.inner_text() and "Completed" in entry.inner_text()
    entry.click()
    page.wait_for_selector('#job[data-status="completed"]')
    assert page.inner_text('dd[data-field="r.duration"]') == "3 s"


def test_page_when_the_job_is_deleted_then_it_shows_deleted_and_stops_following(
    page: Any,
    base_url: str,
    token_id: str,
    worker_service: stack.Proc,
    redis_client: redis.Redis,
) -> None:
    worker_service.signal_group(signal.SIGSTOP)  # the job stays queued while the page follows
    try:
        upload_through_page(page, base_url, token_id, seconds=1.0)
        page.wait_for_selector('#job[data-status="queued"]')
        (job_id,) = [
            key.split(":")[2]
            for key in redis_client.scan_iter(match="yousync:job:*")
            if key.count(":") == 2
        ]
        deleted = httpx.delete(f"{base_url}/tokens/analysis-result/{job_id}")
        assert deleted.status_code == 204

        page.wait_for_selector('#job[data-status="deleted"]')
    finally:
        worker_service.signal_group(signal.SIGCONT)
    assert page.get_attribute("#conn", "data-state") == "done"
    assert page.inner_text("#error-text") == "Deleted on request"
    assert page.is_hidden("#cancel") and page.is_hidden("#retry")


def test_page_when_api_killed_mid_job_then_reconnects_and_finishes(
    page: Any, base_url: str, token_id: str, page_api: stack.Proc
) -> None:
    upload_through_page(page, base_url, token_id, seconds=4.0)
    # The job is running (the analysis server takes ≥ 1 s): drop every connection at once.
    page.wait_for_function("document.getElementById('job-bar').value > 0")
    page_api.kill()
    status_at_kill = page.get_attribute("#job", "data-status")
    assert status_at_kill in ("queued", "processing"), status_at_kill

    page.wait_for_selector('#conn[data-state="reconnecting"]', timeout=10_000)
    assert "reconnecting" in page.inner_text("#conn")
    page_api.start()

    page.wait_for_selector('#job[data-status="completed"]', timeout=30_000)
    assert_climbed_to_100(bar_history(page))
    assert page.inner_text('dd[data-field="r.duration"]') == "4 s"
    assert page.get_attribute("#conn", "data-state") == "done"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "progress-page-after-reconnect.png"), full_page=True)

    # The restarted API resumed the page after its last event: the browser's own reconnect
    # with Last-Event-ID (a replay), or — had the browser given up — the page's fallback.
    metrics = httpx.get(f"{base_url}/metrics").text
    replays = re.search(r"^yousync_sse_replays_total (\S+)$", metrics, re.M)
    assert replays is not None
    fallback = 'route="/tokens/analysis-result/{job_id}"' in metrics
    assert float(replays.group(1)) >= 1 or fallback, metrics


def create_job_beside_playwright(redis_url: str, token_id: str) -> str:
    """`create_job` runs its own event loop (asyncio.run), which cannot start in this thread
    while Playwright's sync API has a loop running here: a thread of its own."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(create_job, redis_url, token_id).result(timeout=30)


def log_lines_since(proc: stack.Proc, offset: int) -> list[str]:
    """The process's log lines written after byte `offset` of its log file."""
    with proc.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace").splitlines()


def answered(lines: list[str], route: str, status: int) -> bool:
    """Whether the API's request log (logfmt; a route template is quoted) has such an answer."""
    return any(f'route="{route}" ' in line and f" status={status} " in line for line in lines)


def test_page_when_stream_answers_503_while_redis_is_down_then_page_retries_and_finishes_by_itself(
    page: Any, workdir: Path, stack_env: dict[str, str], token_id: str
) -> None:
    # Its own Redis (append-only file: the job survives the restart) and its own API, so the
    # outage disturbs no other test. No worker: the test writes the job's events itself.
    own_redis = stack.redis_proc(workdir, persistent=True).start()
    redis_url = f"redis://127.0.0.1:{own_redis.name.split(':')[1]}/0"
    api = stack.api_proc({**stack_env, "REDIS_URL": redis_url}, workdir).start()
    api_url = f"http://127.0.0.1:{api.name.split(':')[1]}"
    progress_route = "/tokens/analysis-progress/{job_id}"
    result_route = "/tokens/analysis-result/{job_id}"
    try:
        job_id = create_job_beside_playwright(redis_url, token_id)
        store = sync_store(redis_url)
        store.update(job_id, token_id, status="processing", progress=10, stage="uploading")

        # A job this browser never uploaded: `#job=<id>` alone is enough to follow it.
        page.goto(f"{api_url}/#job={job_id}")
        page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
        page.wait_for_function("document.getElementById('job-bar').value === 10", timeout=10_000)
        store.update(job_id, token_id, status="processing", progress=30, stage="uploading")
        page.wait_for_function("document.getElementById('job-bar').value === 30", timeout=10_000)

        # Redis goes down and the API restarts meanwhile: the browser's own reconnect (with
        # Last-Event-ID) reaches an API that cannot read the job and answers 503.
        own_redis.kill()
        api.kill()
        page.wait_for_selector('#conn[data-state="reconnecting"]', timeout=10_000)
        log_offset = api.log_path.stat().st_size
        api.start()

        # The page got the 503 on its stream, then kept asking the result endpoint (its
        # fallback: a plain EventSource never retries after a 503), getting 503 there too.
        wait_until(
            lambda: answered(log_lines_since(api, log_offset), progress_route, 503),
            timeout=20,
            what="the browser's reconnect answered 503",
        )
        wait_until(
            lambda: answered(log_lines_since(api, log_offset), result_route, 503),
            timeout=20,
            what="the page's fallback asked the result endpoint while Redis was down",
        )
        assert page.get_attribute("#conn", "data-state") == "reconnecting"
        assert "reconnecting" in page.inner_text("#conn")
        assert page.get_attribute("#job", "data-status") == "processing"
        # What the browser was told: 503 with Retry-After, the error body naming Redis.
        outage = httpx.get(f"{api_url}/tokens/analysis-progress/{job_id}", timeout=10)
        assert outage.status_code == 503, outage.text
        assert outage.headers["retry-after"] == "5"
        assert outage.json()["code"] == "redis_unavailable"

        # Redis is back (with the job): the page resumes the stream itself — no reload.
        own_redis.start()
        store = sync_store(redis_url)
        store.update(job_id, token_id, status="processing", progress=60, stage="analyzing")
        page.wait_for_function("document.getElementById('job-bar').value === 60", timeout=30_000)
        assert page.get_attribute("#conn", "data-state") == "live"
        store.update(
            job_id,
            token_id,
            status="completed",
            progress=100,
            stage="done",
            result={"duration_ms": 4000},
        )
        page.wait_for_selector('#job[data-status="completed"]', timeout=10_000)
        assert page.get_attribute("#conn", "data-state") == "done"
        assert page.inner_text('dd[data-field="r.duration"]') == "4 s"
        history = bar_history(page)
        assert history == sorted(history) and history[-1] == 100, history
        assert {10, 30, 60} <= set(history), history
        # The stream itself came back (not only the final snapshot from the result endpoint).
        assert answered(log_lines_since(api, log_offset), progress_route, 200)
    finally:
        api.stop()
        own_redis.kill()


# Calls the page's scheduleCheck() eight times with setTimeout stubbed out: the base delay
# before each call and the wait each call actually asked for.
SCHEDULE_CHECKS = """() => {
  const realSetTimeout = window.setTimeout;
  const waits = [];
  window.setTimeout = (_, ms) => { waits.push(ms); return 0; };
  try {
    state.reconnectDelay = 1000;
    const bases = [];
    for (let i = 0; i < 8; i++) { bases.push(state.reconnectDelay); scheduleCheck(); }
    return { bases, waits, conn: document.getElementById("conn").dataset.state };
  } finally {
    window.setTimeout = realSetTimeout;
  }
}"""


def test_page_fallback_delay_when_scheduled_then_doubles_to_the_cap_and_is_jittered(
    page: Any, base_url: str
) -> None:
    page.goto(f"{base_url}/")
    drawn = page.evaluate(SCHEDULE_CHECKS)

    assert drawn["bases"] == [1000, 2000, 4000, 8000, 10000, 10000, 10000, 10000]
    for base, wait in zip(drawn["bases"], drawn["waits"], strict=True):
        assert base / 2 <= wait <= 3 * base / 2, (base, wait)
    assert drawn["conn"] == "reconnecting"
    # Uniform over [base/2, 3·base/2]: pages cut off by one outage spread over a whole base.
    waits = page.evaluate("Array.from({ length: 1000 }, () => jittered(1000))")
    assert all(500 <= wait <= 1500 for wait in waits)
    assert min(waits) < 600 and max(waits) > 1400 and len(set(waits)) > 900


def test_page_when_browser_prefers_korean_then_labels_are_korean_and_keyboard_works(
    browser: Any, base_url: str
) -> None:
    context = browser.new_context(locale="ko-KR")
    try:
        page = context.new_page()
        page.goto(f"{base_url}/")
        assert page.get_attribute("html", "lang") == "ko"
        assert page.inner_text("#upload") == "업로드"
        assert page.inner_text("#upload-heading") == "1. 녹음 파일"
        assert page.get_by_role("progressbar", name="분석").count() == 1
        # Stage labels come from the server's stage table (/contract.js), in the page's language.
        for stage in Stage:
            assert page.evaluate(f"t('stage.{stage.value}')") == stage.labels["ko"]

        # Every control is reachable in order with Tab; Enter on Upload submits the form.
        page.focus("#token")
        order = []
        for _ in range(3):
            page.keyboard.press("Tab")
            order.append(page.evaluate("document.activeElement.id"))
        assert order == ["file", "record", ""], order  # "" = the Settings <summary>
        page.focus("#upload")
        page.keyboard.press("Enter")
        assert page.inner_text("#form-error").startswith("먼저 파일을 선택하거나")

        page.goto(f"{base_url}/?lang=en")
        assert page.inner_text("#upload") == "Upload"
    finally:
        context.close()


def test_page_when_recorded_from_microphone_then_webm_upload_completes(
    page: Any, base_url: str, token_id: str
) -> None:
    page.goto(f"{base_url}/")
    page.fill("#token", token_id)
    page.click("#record")
    page.wait_for_selector('#record[aria-pressed="true"]', timeout=5_000)
    page.wait_for_timeout(1500)
    page.click("#record")
    page.wait_for_function("document.getElementById('chosen').textContent.includes('Recorded')")
    page.click("#upload")

    page.wait_for_selector('#job[data-status="completed"]')
    assert page.locator("#recent-list button").first.inner_text().startswith("recording-")
    duration = page.inner_text('dd[data-field="r.duration"]')
    assert duration.endswith(" s") and 1.0 <= float(duration[:-2]) <= 3.0, duration
