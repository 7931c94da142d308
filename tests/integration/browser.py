"""A real browser for the web pages' tests: Debian's chromium driven by Playwright
(``playwright install`` cannot download here). ``browser = browser_fixture()`` in a test
module; a missing chromium or Playwright fails the test, naming it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_fixture() -> Any:
    @pytest.fixture(scope="module")
    async def browser() -> AsyncIterator[Any]:
        try:
            from playwright.async_api import async_playwright
        except ImportError as exc:
            pytest.fail(f"playwright is not installed ({exc}): pip install -e '.[dev]'")
        if shutil.which(CHROMIUM) is None:
            pytest.fail(f"chromium is not installed ({CHROMIUM}): apt-get install chromium "
                        "(make system-deps)")
        async with async_playwright() as playwright:
            launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                yield launched
            finally:
                await launched.close()

    return browser
