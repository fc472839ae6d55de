"""Chapter 06's explorer in live JupyterLab, driven as a user drives it, in headless Chromium.

Run by `make book` (marker `book`; needs the book environment's JupyterLab, Debian's chromium
and the `playwright` package). JupyterLab is started on a copy of the notebook in a temporary
folder (its autosave never touches `notebooks/`), the notebook is run with Run All, and then
the budget slider is moved and the method changed: each must change both the figure and the
status line that carries the answers. The explorer must first show the chapter's parameter
defaults. Screenshots go to artifacts/lab-screenshots/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "lab-screenshots"
CHROMIUM = "/usr/bin/chromium"
NOTEBOOK = "06_explorer.ipynb"
TOKEN = "eadp-lab-live-test"

pytestmark = pytest.mark.book


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """The URL of a copy of chapter 06 in JupyterLab (its log in the temporary folder, so a full pipe never stalls it)."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    config = tmp_path_factory.mktemp("lab-settings")
    settings = config / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no "official Jupyter news?" popup over the page
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port = _free_port()
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(config),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    log_path = config / "jupyterlab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1", "--port", str(port),
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("JupyterLab exited: " + log_path.read_text()[-2000:])
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not answer within 60 s")
    yield f"{base}/lab/tree/{NOTEBOOK}?token={TOKEN}"
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _state(page) -> tuple[str, str]:
    """The explorer's image source and status text (the answers)."""
    image = page.locator(".jp-OutputArea-output .widget-image").first
    status = page.locator(".jp-OutputArea-output .widget-html-content").first
    return image.get_attribute("src") or "", status.inner_text()


def _settle(page, timeout: float = 120.0) -> tuple[str, str]:
    """The state once the kernel is idle and the figure and status have not changed for two seconds
    (each key press on a slider queues its own redraw)."""
    end = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < end:
        idle = page.evaluate("() => (document.querySelector('#jp-main-statusbar') || document.body)"
                             ".innerText.includes('Idle')")
        now = _state(page)
        if now != last or not idle:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 2.0:
            return now
        page.wait_for_timeout(250)
    pytest.fail("the explorer did not settle within the timeout")


def test_the_explorer_responds_in_live_jupyterlab(jupyterlab):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(jupyterlab)
        # Run All does nothing before the kernel is idle
        page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
        # the chapters carry no kernelspec of their own: JupyterLab asks, and a user picks python3
        select = page.locator(".jp-Dialog").get_by_role("button", name="Select")
        try:
            select.wait_for(timeout=15_000)
            select.click()
        except Exception:  # noqa: BLE001 (no dialog: the kernel was chosen already)
            pass
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-Notebook-ExecutionIndicator, .jp-KernelStatus')]"
            ".some(e => /idle/i.test(e.getAttribute('data-status') || e.title || e.textContent))", timeout=120_000)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        slider = page.locator(".jp-OutputArea-output .widget-slider").filter(has_text="budget").first
        try:
            slider.wait_for(timeout=240_000)
        except Exception:
            page.screenshot(path=str(SHOTS / "explorer-failed.png"))
            raise
        page.locator(".jp-OutputArea-output .widget-image").first.wait_for(timeout=300_000)
        page.wait_for_function("() => { const i = document.querySelector('.jp-OutputArea-output .widget-image');"
                               " return i && i.src && i.naturalWidth > 0; }", timeout=300_000)
        # JupyterLab renders only the cells in view: bring the explorer back after Run All scrolled past it
        slider.scroll_into_view_if_needed()
        readout = slider.locator(".widget-readout").first
        # a widget scrolled back into view is drawn again (a new element, its readout text a moment after
        # it): expect re-resolves the locator and retries until the text matches or the timeout
        expect(readout, "the live explorer must start at the chapter's budget (32)").to_have_text("32", timeout=60_000)
        page.screenshot(path=str(SHOTS / "explorer-start.png"))
        start = _settle(page)

        handle = slider.locator(".noUi-handle").first
        handle.focus()
        for _ in range(12):
            handle.press("ArrowLeft")
        moved = _settle(page)
        expect(readout).to_have_text("20", timeout=30_000)
        assert moved[0] != start[0], "moving the budget slider must redraw the figure"
        assert moved[1] != start[1], "moving the budget slider must update the answers line"
        page.screenshot(path=str(SHOTS / "explorer-budget.png"))

        page.locator(".jp-OutputArea-output .widget-dropdown").filter(has_text="method").locator("select") \
            .first.select_option("random")
        changed = _settle(page)
        assert changed[0] != moved[0], "changing the method must redraw the figure"
        assert changed[1] != moved[1], "changing the method must update the answers line"
        assert "random answer" in changed[1]
        page.screenshot(path=str(SHOTS / "explorer-method.png"))
        browser.close()
