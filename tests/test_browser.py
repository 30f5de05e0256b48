"""Run All in a real JupyterLab, driven in headless Chromium, on an untouched lesson.

This is what a learner does on day one: open ``lessons/00_welcome.ipynb`` in JupyterLab,
choose Run > Run All Cells, and read. Every code cell must execute, no cell may end in an
error, every check must show ⏳, and the figures must be drawn. The test clicks the menu
as a person would, saves the notebook from the browser, and reads the saved file.
Screenshots (the first check after Run All, and the end of the notebook) are kept in
``build/browser/`` (or ``$MMLM_COURSE_SCREENSHOTS``).

Needs Chromium and its driver from the system (Debian: ``apt-get install chromium
chromium-driver``; `.ci/run` installs them) plus the ``selenium`` and ``jupyterlab``
packages. Where no browser is installed the test skips and says why, unless
``MMLM_COURSE_REQUIRE_BROWSER=1`` (set by CI), where that is a failure.
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

import nbformat
import pytest

from mmlm_course.tools import notebooks

ROOT = Path(__file__).resolve().parent.parent
LESSON = ROOT / "lessons" / "00_welcome.ipynb"
RUN_ALL_SECONDS = 300


def _missing() -> str | None:
    try:
        import jupyterlab  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed (pip install -e '.[test,lab]')"
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"no {program} on PATH (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser_tools():
    missing = _missing()
    if missing:
        if os.environ.get("MMLM_COURSE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the real-browser test must run here, but {missing}")
        pytest.skip(f"real-browser test skipped: {missing}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path, browser_tools):
    """A JupyterLab server on a free port, serving a folder with the untouched lesson."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(LESSON, work / LESSON.name)
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # every cell stays in the page (no virtual scrolling), so the test can read every prompt
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), "mmlm-course-test"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMLM_COURSE_", "PYTEST_", "JPY_"))}
    env.update(JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = open(tmp_path / "jupyterlab.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                               "--allow-root", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
                               f"--ServerApp.root_dir={work}", "--ServerApp.open_browser=False"],
                              cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                log.close()
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
            time.sleep(0.5)
    yield url, token, work
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _click(driver, xpath: str, seconds: float = 60):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(ec.element_to_be_clickable((By.XPATH, xpath))).click()


def _prompts(driver) -> list[str]:
    """The execution prompt of every code cell in the page: '[ ]:', '[*]:' or '[3]:'."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))"
        ".map(p => p.textContent.trim());")


def test_run_all_in_jupyterlab_reaches_the_end(jupyterlab):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, token, work = jupyterlab
    shots = Path(os.environ.get("MMLM_COURSE_SCREENSHOTS", ROOT / "build" / "browser"))
    shots.mkdir(parents=True, exist_ok=True)
    lesson = nbformat.read(LESSON, 4)
    code_cells = sum(c.cell_type == "code" for c in lesson.cells)
    driver = _chromium()
    try:
        driver.get(f"{url}/lab/tree/{LESSON.name}?token={token}")
        WebDriverWait(driver, 120).until(lambda d: len(_prompts(d)) == code_cells)
        # the kernel is ready when the toolbar's kernel status reads Idle
        WebDriverWait(driver, 120).until(lambda d: d.execute_script(
            "const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
            "return s !== null && s.getAttribute('data-status') === 'idle';"))
        _click(driver, "//div[contains(@class, 'lm-MenuBar-itemLabel') and normalize-space(text())='Run']")
        _click(driver, "//li[@data-command='runmenu:run-all']")
        started = time.monotonic()

        def finished(d) -> bool:
            prompts = _prompts(d)
            return len(prompts) == code_cells and all(p not in ("[ ]:", "[*]:", "[]:") for p in prompts)

        try:
            WebDriverWait(driver, RUN_ALL_SECONDS, poll_frequency=1).until(finished)
        finally:
            driver.save_screenshot(str(shots / "00_welcome_end.png"))
        seconds = time.monotonic() - started
        driver.execute_script(
            "const out = Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
            ".find(o => o.textContent.includes('not attempted yet'));"
            "out.closest('.jp-CodeCell').scrollIntoView({block: 'center'});")
        driver.save_screenshot(str(shots / "00_welcome_first_check.png"))
        page_images = len(driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-RenderedImage img"))
        _click(driver, "//div[contains(@class, 'lm-MenuBar-itemLabel') and normalize-space(text())='File']")
        _click(driver, "//li[@data-command='docmanager:save']")
        saved = work / LESSON.name
        WebDriverWait(driver, 60).until(
            lambda d: all(c.get("execution_count") for c in nbformat.read(saved, 4).cells if c.cell_type == "code"))
    except Exception:
        driver.save_screenshot(str(shots / "00_welcome_failure.png"))
        raise
    finally:
        driver.quit()

    executed = nbformat.read(work / LESSON.name, 4)
    cells = [c for c in executed.cells if c.cell_type == "code"]
    errors = [(i, o.get("ename")) for i, c in enumerate(cells) for o in c.outputs if o.output_type == "error"]
    assert errors == [], f"Run All raised in code cells {errors}"
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"not every cell ran, in order: {counts}"
    shown = [o.get("text", "") for c in cells if notebooks.CHECK_CALL.search(c.source) for o in c.outputs]
    assert sum(text.startswith("⏳") for text in shown) == len(notebooks.exercise_ids(lesson))
    stored_images = sum("image/png" in o.get("data", {}) for c in cells for o in c.outputs)
    assert stored_images >= 1 and page_images >= 1, (stored_images, page_images)
    print(f"Run All: {len(cells)} code cells in {seconds:.1f} s, {page_images} figures; screenshots in {shots}")
