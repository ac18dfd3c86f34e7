"""The progress page (`GET /`) in a real browser: Playwright (PyPI) driving Debian's Chromium
against the real stack — upload through the page, the live bar, the rendered result, a dropped
SSE connection (the API process SIGKILLed and restarted mid-job), Korean labels, the keyboard
and a microphone recording (Chromium's fake audio device).

Screenshots go to tests/artifacts/ (gitignored). `UPDATE_DOCS_SCREENSHOT=1` also copies the
finished page to docs/screenshot.png, the picture in the README.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devtools import stack
from tests.helpers.audio import wav_bytes
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
