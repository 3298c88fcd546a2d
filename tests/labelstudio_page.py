"""Label Studio's own pages in headless Chromium (Debian's, driven by Playwright), kept on
loopback: what the browser tests share."""

from __future__ import annotations

import shutil
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
