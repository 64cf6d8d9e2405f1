"""The web page in headless Chromium (Debian's package, driven by Playwright): sign in, generate, watch, see."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bridge.conftest import PASSWORDS, LiveBridge

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: the worker shares two cores with everything else in CI.
STEP_TIMEOUT_MS = 90_000
# Records every value the progress bar takes, before the job starts, so no step can slip by between polls.
OBSERVE_PROGRESS = """() => {
  window.progressSeen = [];
  const bar = document.getElementById("progress");
  new MutationObserver(() => window.progressSeen.push([Number(bar.getAttribute("value")), Number(bar.max)]))
    .observe(bar, { attributes: true, attributeFilter: ["value"] });
}"""


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium; missing: skipped locally, a failure under CI=true."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    return CHROMIUM


async def test_sign_in_generate_and_watch_progress(chromium: Path, live_bridge: LiveBridge, tmp_path: Path):
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=STEP_TIMEOUT_MS)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        page = await browser.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        try:
            await page.goto(live_bridge.url)
            await page.fill("#username", "alice")
            await page.fill("#password", PASSWORDS["alice"])
            await page.click("#signin")
            await expect(page.locator("#job-form")).to_be_visible()
            await page.fill("#prompt", "a lighthouse at dusk")
            for field, value in {"#width": "128", "#height": "128", "#steps": "60", "#seed": "11"}.items():
                await page.fill(field, value)
            await page.evaluate(OBSERVE_PROGRESS)
            await page.click("#submit")
            image = page.locator("#result img")
            await expect(image).to_be_visible()
            await page.wait_for_function("document.querySelector('#result img').naturalWidth === 128")
            await expect(page.locator("#result figcaption")).to_contain_text("seed 11")
            await expect(page.locator("#result a.download")).to_have_attribute(
                "href", await image.get_attribute("src") or ""
            )
            await expect(page.locator("#jobs li").first).to_contain_text("a lighthouse at dusk")
            seen: list[list[float]] = await page.evaluate("window.progressSeen")
        finally:
            await page.screenshot(path=str(tmp_path / "bridge.png"), full_page=True)
            status = await page.locator("#status").text_content()
            await browser.close()
            print(f"page status: {status}; screenshot: {tmp_path / 'bridge.png'}")
            print(live_bridge.log_path.read_text(errors="replace")[-3000:])

    assert any(0 < value < maximum for value, maximum in seen), f"the progress bar never moved mid-job: {seen}"
    assert (tmp_path / "bridge.png").stat().st_size > 0
