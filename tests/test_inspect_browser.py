"""The `inspect` page in a real browser: Debian's headless Chromium driven by Playwright (never a
downloaded browser). Skipped, with the reason, where Chromium or Playwright is missing; `.ci/run`
installs Chromium so that CI always runs them.

One browser for the module, a fresh context (profile) per test. A run also writes a screenshot
of a realistic session to the test's tmp dir, and to docs/inspect.png (the README's) only when
INSPERA_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from inspera_cli.signing import diagnose_signature, sign
from inspera_cli.webhook_body import build_body
from tests.inspecting import SECRET, inspecting
from tests.receiver import Receiver

CHROMIUM = os.environ.get("INSPERA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a closed network: no first-run, sync, component or background fetches (each one would
# be a refused connection). Playwright gives every launch a fresh temporary --user-data-dir.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "inspect.png"
# Read at import: the suite's autouse fixture clears INSPERA_* variables before each test.
UPDATE_SCREENSHOT = os.environ.get("INSPERA_UPDATE_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does this)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the test extra)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def tab(browser: Any) -> Iterator[Any]:
    """One tab for the module (a new profile costs half a second); each test opens its own
    inspector, on its own port: another origin."""
    context = browser.new_context(viewport={"width": 1360, "height": 820})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def page(tab: Any) -> Iterator[Any]:
    errors: list[str] = []

    def failed(error: Any) -> None:
        errors.append(str(error))

    tab.set_viewport_size({"width": 1360, "height": 820})
    tab.on("pageerror", failed)
    try:
        yield tab
    finally:
        tab.remove_listener("pageerror", failed)
        tab.goto("about:blank")
    assert errors == []  # no script error, and no CSP violation turned into one


def post(url: str, body: bytes, *, secret: str | None = SECRET, signature: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if signature is not None or secret is not None:
        headers["X-Inspera-Signature"] = signature if signature is not None else sign(body, secret or "")
    return requests.post(url, data=body, headers=headers, timeout=10).status_code


def open_page(page: Any, inspector: Any) -> None:
    page.goto(inspector.url)
    page.wait_for_selector("#live.on")


@contextmanager
def detail_open(page: Any, body: bytes, **options: Any) -> Iterator[tuple[Any, Any]]:
    """An inspector (``options`` as for ``inspecting``) that got ``body``, its page showing that row."""
    with inspecting(**options) as (listener, inspector):
        post(listener.url, body)
        open_page(page, inspector)
        page.click("#rows tr[data-id='1']")
        yield listener, inspector


def row_texts(page: Any) -> list[str]:
    texts: list[str] = page.eval_on_selector_all("#rows tr", "rows => rows.map(r => r.innerText)")
    return texts


def wait_until(page: Any, expression: str, timeout: float = 5.0) -> None:
    """Poll a JavaScript expression (page.wait_for_function would need 'unsafe-eval', which the
    page's CSP rightly forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
        time.sleep(0.02)


def wait_rows(page: Any, count: int) -> None:
    wait_until(page, f"document.querySelectorAll('#rows tr').length === {count}")


def test_a_fired_event_appears_within_a_second_without_a_reload(page: Any, cli: Any) -> None:
    with inspecting() as (listener, inspector):
        open_page(page, inspector)
        page.evaluate("window.__sameDocument = true")
        cli("trigger", "confirm_final_grades", "--object-id", "35199862", "--to", listener.url,
            "--secret-env", "HOOK_SECRET", env={"HOOK_SECRET": SECRET})
        # From the answer on (the row exists from then): the page's part, not trigger's own start.
        started = time.monotonic()
        page.wait_for_selector("#rows tr[data-id='1']", timeout=1000)
        elapsed = time.monotonic() - started
        cells = page.eval_on_selector("#rows tr[data-id='1']",
                                      "row => [...row.cells].map(c => c.innerText.trim())")
        assert page.evaluate("window.__sameDocument") is True
    assert elapsed < 1.0
    assert cells[1:] == ["confirm_final_grades", "35199862", "valid", "#1", "200", ""]
    assert page.inner_text("#count") == "1 request"


def test_a_wrongly_signed_event_shows_verify_s_diagnosis(page: Any) -> None:
    body = build_body("confirm_final_grades", 35199880)
    with inspecting() as (listener, inspector):
        post(listener.url, body + b"\n", signature=sign(body, SECRET))
        open_page(page, inspector)
        page.click("#rows tr[data-id='1']")
        reason = page.inner_text("#diagnosis .reason")
        heading = page.inner_text("#diagnosis h2")
        signature_pill = page.inner_text("#rows tr[data-id='1'] .pill.invalid")
        raw = page.eval_on_selector("#raw-body", "pre => pre.textContent")
    assert heading == "Why the signature is invalid" and signature_pill == "invalid"
    assert reason == diagnose_signature(body + b"\n", sign(body, SECRET), SECRET).reason
    assert raw == body.decode() + "↵\n"  # the unsigned trailing newline, made visible


def test_replay_reaches_the_app_and_the_answer_shows_inline(page: Any, local_app: Receiver) -> None:
    body = build_body("confirm_final_grades", 35199862)
    with detail_open(page, body, forward=local_app.url) as (listener, inspector):
        local_app.body = b'{"replayed": "yes"}'
        page.click("#replay")
        outcome = page.inner_text("#replay-outcome")
        wait_rows(page, 2)
        newest = page.inner_text("#rows tr:first-child")
        with page.expect_download() as download:
            page.click("#download")
        line = Path(download.value.path()).read_bytes()
        record_line = requests.get(inspector.url + "api/requests/1/record", timeout=5).content
    first, again = local_app.wait(2)
    assert again.body == body and again.headers["X-Inspera-Signature"] == sign(body, SECRET)
    assert outcome.startswith("Replayed: 200 OK in ") and '{"replayed": "yes"}' in outcome
    assert "replay" in newest
    assert line == record_line and line.startswith(b'{"receivedAt":') and line.endswith(b"}\n")


def test_edit_and_replay_sends_the_edited_body_signed(page: Any, local_app: Receiver) -> None:
    body = build_body("confirm_final_grades", 35199862)
    with detail_open(page, body, forward=local_app.url) as (listener, inspector):
        page.click("#edit")
        edited = body.decode().replace("35199862", "77777777")
        page.fill("#edit-body", edited)
        page.click("#send-edited")
        page.wait_for_selector("#replay-outcome")
        wait_rows(page, 2)
        replay_row = page.inner_text("#rows tr:first-child")
    received = local_app.wait(2)[1]
    assert received.body == edited.encode()
    assert received.headers["X-Inspera-Signature"] == sign(edited.encode(), SECRET)
    assert "77777777" in replay_row and "replay" in replay_row


def test_a_hostile_body_renders_as_text(page: Any) -> None:
    event = "<script>window.__pwned = 1</script>"
    body = ('{"contextObjectId": 1, "event": "' + event + '", '
            '"x": "<img src=x onerror=\\"window.__pwned = 2\\">"}').encode()
    with inspecting() as (listener, inspector):
        post(listener.url, body)
        requests.post(listener.url, data=body, timeout=10,
                      headers={"X-Inspera-Signature": sign(body, SECRET),
                               "X-Evil": "<b onmouseover=alert(1)>hi</b>"})
        open_page(page, inspector)
        page.click("#rows tr[data-id='1']")
        page.wait_for_selector("#raw-body")
        shown_event = page.inner_text("#rows tr[data-id='1'] .c-event")
        raw = page.eval_on_selector("#raw-body", "pre => pre.textContent")
        options = page.eval_on_selector_all("#f-event option", "os => os.map(o => o.textContent)")
        page.click("#rows tr[data-id='2']")
        page.wait_for_selector("text=X-Evil")
        pwned = page.evaluate("window.__pwned")
        injected = page.evaluate("document.querySelectorAll('#panes script, #panes img, #panes b').length")
    assert shown_event == event and raw == body.decode()
    assert event in options
    assert pwned is None and injected == 0


def test_filters_and_search_narrow_the_list(page: Any) -> None:
    with inspecting() as (listener, inspector):
        post(listener.url, build_body("confirm_final_grades", 35199862))
        post(listener.url, build_body("complete_grading", 35199899))
        post(listener.url, build_body("confirm_final_grades", 35199877), secret="wrong")
        post(listener.url, build_body("user_deleted", 5), secret=None)
        open_page(page, inspector)
        wait_rows(page, 4)
        page.select_option("#f-signature", "invalid")
        wait_rows(page, 1)
        only_invalid = row_texts(page)
        page.select_option("#f-signature", "")
        page.select_option("#f-event", "confirm_final_grades")
        wait_rows(page, 2)
        page.select_option("#f-event", "")
        page.select_option("#f-status", "4xx")
        wait_rows(page, 2)
        page.select_option("#f-status", "")
        page.fill("#f-q", "35199899")
        wait_rows(page, 1)
        searched = row_texts(page)
        # a live row that does not match the search stays out; one that does comes in
        post(listener.url, build_body("confirm_final_grades", 1))
        post(listener.url, build_body("complete_grading", 35199899))
        wait_rows(page, 2)
        page.fill("#f-q", "")
        wait_rows(page, 6)
    assert len(only_invalid) == 1 and "35199877" in only_invalid[0]
    assert len(searched) == 1 and "complete_grading" in searched[0]


def test_copy_as_curl_gives_a_command_that_reproduces_the_request(page: Any, local_app: Receiver) -> None:
    body = b'{"contextObjectId": 1, "event": "confirm_final_grades", "note": "it\'s $HOME `x` \\\\ \\n"}'
    with detail_open(page, body, forward=local_app.url) as (listener, inspector):
        page.click("#curl")
        command = page.inner_text("#curl-command")
        copied = page.evaluate("navigator.clipboard.readText()")
        local_app.wait(1)
        done = subprocess.run(["bash", "-c", command], capture_output=True, timeout=30)
    assert copied == command and SECRET not in command
    assert done.returncode == 0, done.stderr
    first, again = local_app.wait(2)
    assert again.body == body == first.body
    assert again.headers["X-Inspera-Signature"] == sign(body, SECRET)


def test_the_keyboard_moves_opens_and_closes(page: Any) -> None:
    with inspecting() as (listener, inspector):
        for number in (1, 2, 3):
            post(listener.url, build_body("confirm_final_grades", number))
        open_page(page, inspector)
        wait_rows(page, 3)
        page.keyboard.press("ArrowDown")
        page.wait_for_selector("#detail:not([hidden]) .d-title")
        first = page.inner_text(".d-title .id")
        page.keyboard.press("j")
        wait_until(page, "document.querySelector('.d-title .id').textContent === '#2'")
        page.keyboard.press("Escape")
        closed = page.evaluate("document.getElementById('detail').hidden")
        focused = page.evaluate("document.activeElement.dataset.id")
        page.keyboard.press("/")
        search_focused = page.evaluate("document.activeElement.id")
    assert first == "#3" and closed is True and focused == "2" and search_focused == "f-q"


def test_a_narrow_window_shows_the_list_then_the_detail_over_it(page: Any) -> None:
    with inspecting() as (listener, inspector):
        post(listener.url, build_body("confirm_final_grades", 35199862))
        page.set_viewport_size({"width": 400, "height": 760})
        open_page(page, inspector)
        page.click("#rows tr[data-id='1']")
        page.wait_for_selector(".back")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        page.click(".back")
        closed = page.evaluate("document.getElementById('detail').hidden")
    assert overflow <= 0 and closed is True


def test_a_screenshot_of_a_realistic_session(page: Any, local_app: Receiver, tmp_path: Path) -> None:
    """A session as the README shows it: several events, a retry, an app failing one, a Java-map
    body, a wrongly signed request with its diagnosis open, and a replay's answer."""
    with inspecting(forward=local_app.url) as (listener, inspector):
        bodies = [
            build_body("verification", 0, extra={"contextObjectTitle": "7f1c2b9e-3a41-4c7e-9d2f"}),
            build_body("confirm_final_grades", 35199862),
            build_body("complete_grading", 35199871),
            build_body("resource_published", 35210044, legacy=True),
        ]
        for body in bodies:
            post(listener.url, body)
        post(listener.url, bodies[1])  # Inspera's retry
        local_app.status, local_app.body = 500, b'{"error": "grade sync failed: database is locked"}'
        post(listener.url, build_body("confirm_final_grades", 35199880))
        local_app.status, local_app.body = 200, b'{"status": "queued", "job": 4182}'
        wrong = build_body("confirm_final_grades", 35199899)
        post(listener.url, wrong + b"\n", signature=sign(wrong, SECRET))
        open_page(page, inspector)
        wait_rows(page, 7)
        page.click("#rows tr[data-id='6']")
        page.click("#replay")
        page.wait_for_selector("#replay-outcome")
        page.click("#rows tr[data-id='7']")
        page.wait_for_selector("#diagnosis")
        page.click("#replay")
        page.wait_for_selector("#replay-outcome")
        page.evaluate("document.querySelector('#rows tr[data-id=\"7\"]').focus()")
        page.mouse.move(0, 0)
        time.sleep(1.7)  # the highlight of new rows fades
        page.screenshot(path=str(tmp_path / "inspect.png"))
        if UPDATE_SCREENSHOT:
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
    assert (tmp_path / "inspect.png").stat().st_size > 20_000
