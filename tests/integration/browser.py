"""A real browser for the dashboard's tests and screenshot: Debian's chromium, driven by Playwright."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Any, Iterator, Optional

# Playwright cannot download its own browsers here (no network but the package registries), so it
# drives the system's: `apt-get install chromium`. SENDTRACK_CHROMIUM names another binary.
CHROMIUM = os.environ.get("SENDTRACK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing() -> Optional[str]:
    """Why the browser cannot run here, or None."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium browser (Playwright's sync API)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_dashboard(browser: Any, port: int, auth: Optional[tuple[str, str]], query: str = "refresh=0",
                   viewport: tuple[int, int] = (1400, 1000)) -> Any:
    """A page showing the dashboard once every panel has loaded. With `auth`, the browser answers the
    worker's 401 basic-auth challenge with it, as a person would type it."""
    context = browser.new_context(
        viewport={"width": viewport[0], "height": viewport[1]},
        http_credentials={"username": auth[0], "password": auth[1]} if auth else None,
    )
    page = context.new_page()
    page.errors = []  # the page's script errors: a test fails on any (`wait_loaded`)
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))
    page.goto(f"http://127.0.0.1:{port}/dashboard?{query}")
    wait_loaded(page)
    return page


def wait_loaded(page: Any, after: int = -1, timeout: float = 30_000) -> None:
    """Wait until a refresh newer than generation `after` has drawn every panel, with no script error."""
    try:
        page.wait_for_function(
            f"document.body.dataset.loaded === '1' && Number(document.body.dataset.generation) > {after}",
            timeout=timeout)
    finally:
        assert not getattr(page, "errors", None), f"the dashboard's script failed: {page.errors}"


def table(page: Any, testid: str) -> list[dict[str, str]]:
    """A rendered table's rows: {column: data-value (numbers) or text}."""
    return page.eval_on_selector_all(
        f"[data-testid='{testid}'] tbody tr",
        "rows => rows.map(r => Object.fromEntries([...r.querySelectorAll('td')].map("
        "td => [td.dataset.col, td.dataset.value !== undefined ? td.dataset.value : td.textContent])))")
