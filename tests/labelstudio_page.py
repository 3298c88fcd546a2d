"""Label Studio's own pages in headless Chromium (Debian's, driven by Playwright), kept on
loopback: what the browser tests share."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conftest import ROOT, LabelStudioStack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "runs" / "browser"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = ("http://127.0.0.1", "http://localhost", "data:", "blob:")


def new_page(browser: Any) -> Any:
    """A page whose requests off this machine are refused."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.route(
        "**/*",
        lambda route: route.continue_() if route.request.url.startswith(LOOPBACK) else route.abort(),
    )
    return page


def log_in(page: Any, stack: LabelStudioStack) -> None:
    page.goto(f"{stack.url}/user/login")
    page.fill("input[name=email]", stack.login.username)
    page.fill("input[name=password]", stack.login.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url)


def open_task_with_auto_annotation(page, stack: LabelStudioStack, project: int, task: int) -> None:
    """Log in, open the task, wait for its image, and turn Auto-Annotation on (README's step 1)."""
    log_in(page, stack)
    page.goto(f"{stack.url}/projects/{project}/data?task={task}")
    page.wait_for_selector(".konvajs-content canvas", timeout=60_000)
    page.wait_for_function(
        "() => window.Htx?.annotationStore?.selected?.names?.get('image')?.imageIsLoaded === true",
        timeout=60_000,
    )
    page.locator('input[data-testid="bottombar-auto-annotation-toggle"]').locator("xpath=..").click()
    page.evaluate("() => document.activeElement && document.activeElement.blur()")


def stage_scale(page, width: int, height: int) -> tuple[float, float, float]:
    """Screen pixels per image pixel, and the image's top-left corner on the screen."""
    stage = page.locator(".konvajs-content").first.bounding_box()
    assert stage is not None
    return min(stage["width"] / width, stage["height"] / height), stage["x"], stage["y"]


@contextmanager
def labelling_page(failure_screenshot: str) -> Iterator[Any]:
    """A page in headless Chromium kept on loopback, closed afterwards; where the block fails,
    a screenshot of the page goes to SCREENSHOTS under `failure_screenshot`."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = new_page(browser)
        try:
            yield page
        except Exception:
            page.screenshot(path=str(SCREENSHOTS / failure_screenshot))
            raise
        finally:
            browser.close()
