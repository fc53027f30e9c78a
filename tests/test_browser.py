"""The notebooks and the Lab panel in a real JupyterLab, driven in a real (headless) Chromium.

The test starts its own JupyterLab on 127.0.0.1 with a random token, a throwaway root
folder and throwaway Jupyter config, data and runtime folders (all under the test's
``tmp_path``), and drives Debian's Chromium (``/usr/bin/chromium``, never a browser
download) with Playwright. Each notebook is copied into the server's root with
``globals().update(CI_PARAMETERS)`` inserted after its parameters cell, as
tests/test_notebooks.py does, so the runs stay short; it is opened, every cell is run from
the "Run" menu, and the page is checked: no cell shows an error or a traceback, every figure
is an image that loaded, the Lab panel renders as widgets (not a text repr, no "Error
displaying widget"), its controls fit their boxes at 1024x768 and 1280x800 with the file
browser open, Run moves the bar and redraws the plots, a second lock lands in Compare.

Under CI (the environment variable ``CI`` set, as .ci/run does) a browser or server that
cannot start fails the test; elsewhere the test is skipped with one line saying why. On a
failure a screenshot is saved in the test's ``tmp_path`` and its path printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
OVERRIDE = "globals().update(CI_PARAMETERS)  # injected by tests/test_browser.py"
SERVER_START_S = 60.0  #: seconds JupyterLab may take to write its server file
PAGE_TIMEOUT_MS = 60_000  #: default Playwright wait: page loads, kernels starting, widgets
NOTEBOOK_TIMEOUT_MS = 240_000  #: one notebook's "Run All Cells", CI parameters
RUN_TIMEOUT_MS = 90_000  #: one press of the panel's Run button
SIZES = ((1024, 768), (1280, 800))  #: viewports of the layout checks, file browser open
LAB = "05_lab.ipynb"


def _unavailable(why: str) -> None:
    """Fail under CI (it must run there), skip elsewhere, with one line saying why."""
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run under CI: {why}", pytrace=False)
    pytest.skip(f"browser test skipped: {why}")


# -- the server ---------------------------------------------------------------------------


@dataclass
class Server:
    """A running JupyterLab: its process, base URL, token and root folder."""

    process: subprocess.Popen[bytes]
    url: str
    token: str
    root: Path
    log: Path

    def lab_url(self, path: str = "") -> str:
        return f"{self.url}lab/tree/{path}?reset&token={self.token}"  # reset: only this notebook open


def _write_notebooks(root: Path) -> list[str]:
    """Copy every notebook into ``root`` with its CI parameters injected; return their names."""
    nbformat = pytest.importorskip("nbformat")
    names = []
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: want exactly one cell tagged 'parameters'"
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(OVERRIDE))
        nbformat.write(nb, root / path.name)
        names.append(path.name)
    return names


def _settings(config_dir: Path) -> None:
    """User settings: every cell in the page (no windowing), no news or update checks."""
    settings = config_dir / "lab" / "user-settings" / "@jupyterlab"
    tracker = settings / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    news = settings / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process we started, by its pid: terminate, wait, kill, and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@contextlib.contextmanager
def jupyter_lab(base: Path) -> Iterator[Server]:
    """Start JupyterLab on 127.0.0.1 (a free port, a random token) with everything under ``base``."""
    if shutil.which("jupyter") is None and not _importable("jupyterlab"):
        _unavailable("JupyterLab is not installed (pip install -e '.[test]')")
    root, config, data, runtime = (base / n for n in ("root", "config", "data", "runtime"))
    for folder in (root, config, data, runtime):
        folder.mkdir(parents=True)
    _settings(config)
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernels draw inline
    env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(data), JUPYTER_RUNTIME_DIR=str(runtime),
               IPYTHONDIR=str(base / "ipython"), JUPYTER_PLATFORM_DIRS="1")  # fmt: skip
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
        *(["--allow-root"] if os.geteuid() == 0 else []),
    ]  # fmt: skip
    log = base / "jupyterlab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        info = _server_info(process, runtime, log)
        yield Server(process, info["url"], token, root, log)
    finally:
        _stop(process)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _server_info(process: subprocess.Popen[bytes], runtime: Path, log: Path) -> dict[str, Any]:
    """Wait (bounded) for the server's jpserver-PID.json in the runtime folder; read it."""
    deadline = time.monotonic() + SERVER_START_S
    info_file = runtime / f"jpserver-{process.pid}.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-600:]
            _unavailable(f"JupyterLab exited with {process.returncode}: {' '.join(tail.split())[-300:]}")
        if info_file.exists():
            with contextlib.suppress(ValueError):
                return dict(json.loads(info_file.read_text()))
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.2)  # wakes at once if it exits
    _unavailable(f"JupyterLab did not start within {SERVER_START_S:.0f} s (log: {log})")
    raise AssertionError("unreachable")


# -- the browser --------------------------------------------------------------------------


@contextlib.contextmanager
def chromium(base: Path, width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A Playwright page in Debian's Chromium with a fresh profile under ``base``."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        _unavailable(f"no {CHROMIUM} (apt-get install chromium)")
    flags = [*CHROMIUM_FLAGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    with sync_playwright() as p:
        try:
            context = p.chromium.launch_persistent_context(
                str(base / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=flags,
                viewport={"width": width, "height": height}, timeout=PAGE_TIMEOUT_MS,
            )  # fmt: skip
        except Error as exc:
            _unavailable(f"Chromium did not start: {str(exc).splitlines()[0]}")
        try:
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            page = context.pages[0] if context.pages else context.new_page()
            page.console_errors = []  # type: ignore[attr-defined]
            page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
            page.on("pageerror", lambda e: page.console_errors.append(f"page error: {e}"))
            yield page
        finally:
            context.close()


@contextlib.contextmanager
def screenshot_on_failure(page: Any, folder: Path, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        shot = folder / f"failure-{name}.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=False)
            print(f"screenshot of the failure: {shot}")
        raise


# -- JupyterLab, from the page ------------------------------------------------------------

_NOTEBOOK_STATE = """() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext || !panel.content.widgets) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code').map(c => ({
    count: c.model.executionCount,
    running: (c.node.querySelector('.jp-InputPrompt') || {textContent: ''}).textContent.includes('*'),
    errors: c.model.outputs.toJSON().filter(o => o.output_type === 'error')
      .map(o => o.ename + ': ' + o.evalue),
  }));
  return {kernel: kernel ? kernel.status : 'none', cells: cells};
}"""


def open_notebook(page: Any, server: Server, name: str) -> None:
    """Open ``name`` from the server's root and wait for its kernel to be idle."""
    page.goto(server.lab_url(name))
    page.wait_for_function(
        "() => { const s = (" + _NOTEBOOK_STATE + ")(); return s && s.kernel === 'idle'; }",
        timeout=PAGE_TIMEOUT_MS,
    )
    page.evaluate("() => window.jupyterapp.shell.activateById('filebrowser')")  # the sidebar open


def run_all_cells(page: Any) -> dict[str, Any]:
    """Run > Run All Cells, as a user would; wait until every cell ran or one failed; the state."""
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    page.wait_for_function(
        "() => { const s = (" + _NOTEBOOK_STATE + ")(); if (!s || s.kernel !== 'idle') return false;"
        " if (s.cells.some(c => c.running)) return false;"
        " return s.cells.every(c => c.count !== null) || s.cells.some(c => c.errors.length); }",
        timeout=NOTEBOOK_TIMEOUT_MS,
        polling=250,
    )
    return dict(page.evaluate(_NOTEBOOK_STATE))


def page_problems(page: Any) -> list[str]:
    """Tracebacks, "Error displaying widget" and broken images in the page's outputs."""
    return list(
        page.evaluate(
            """() => {
      const out = [], root = window.jupyterapp.shell.currentWidget.node;
      for (const o of root.querySelectorAll('.jp-OutputArea-output')) {
        const text = o.innerText || '';
        if (text.includes('Traceback (most recent call last)')) out.push('traceback: ' + text.slice(0, 300));
        if (text.includes('Error displaying widget')) out.push('Error displaying widget');
        if (o.dataset.mimeType === 'application/vnd.jupyter.stderr' && /\\b\\w+Error\\b/.test(text))
          out.push('stderr: ' + text.slice(0, 300));
      }
      for (const img of root.querySelectorAll('.jp-OutputArea-output img')) {
        if (!img.complete || img.naturalWidth === 0) out.push('an image did not load: ' + img.alt);
      }
      return out;
    }"""
        )
    )


def figure_count(page: Any) -> int:
    """Images in the notebook's outputs that loaded (figures, and the panel's plots)."""
    return int(
        page.evaluate(
            "() => [...window.jupyterapp.shell.currentWidget.node"
            ".querySelectorAll('.jp-OutputArea-output img')]"
            ".filter(i => i.complete && i.naturalWidth > 0).length"
        )
    )


def png_outputs(page: Any) -> int:
    """Outputs of the notebook's cells that hold a PNG (each figure a cell showed)."""
    return int(
        page.evaluate(
            "() => window.jupyterapp.shell.currentWidget.content.widgets"
            ".filter(c => c.model.type === 'code')"
            ".map(c => c.model.outputs.toJSON().filter(o => o.data && o.data['image/png']).length)"
            ".reduce((a, b) => a + b, 0)"
        )
    )


def shut_down_kernel(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")


def settle(page: Any) -> None:
    """Wait two animation frames: JupyterLab lays out on the frame after a resize."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


_PANEL = (
    "() => [...document.querySelectorAll('.jp-OutputArea-output .widget-vbox')]"
    ".find(e => e.innerText.includes('djq lab'))"
)

#: the status line: the panel's second HTML widget (the first is its title)
_STATUS = "() => (" + _PANEL + ")().querySelectorAll(':scope > .widget-html')[1].innerText"

_LAYOUT_PROBLEMS = """(panel) => {
  const out = [], box = panel.getBoundingClientRect();
  const ctx = document.createElement('canvas').getContext('2d');
  const textWidth = (el, text) => {
    ctx.font = getComputedStyle(el).font;
    return ctx.measureText(text).width;
  };
  const inner = el => {
    const s = getComputedStyle(el);
    return el.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
  };
  const controls = [...panel.querySelectorAll(
    '.widget-gridbox > .widget-inline-hbox, .widget-gridbox > .widget-checkbox')];
  if (controls.length < 9) out.push(`only ${controls.length} controls found`);
  for (const c of controls) {
    if (c.offsetParent === null) continue;  // hidden (the poll interval with flock)
    const r = c.getBoundingClientRect();
    const labels = [...c.querySelectorAll('.widget-label, label')]
      .filter(l => l.innerText.replace(/[\\s\\u200b]/g, ''));
    const name = labels.length ? labels[0].innerText.trim() : c.className;
    if (c.scrollWidth > c.clientWidth + 1)
      out.push(`${name}: overflows its box (${c.scrollWidth} > ${c.clientWidth} px)`);
    if (r.right > box.right + 1 || r.left < box.left - 1) out.push(`${name}: outside the panel`);
    for (const label of labels)
      if (label.getBoundingClientRect().width < 1 || label.scrollWidth > label.clientWidth + 1)
        out.push(`${name}: its label is cut`);
    if (!labels.length) out.push(`a control without a visible label: ${name}`);
    const readout = c.querySelector('.widget-readout');
    if (readout) {
      const rr = readout.getBoundingClientRect();
      if (rr.width < 1 || rr.right > r.right + 1 || readout.offsetParent === null)
        out.push(`${name}: its readout is not visible`);
      else if (textWidth(readout, readout.innerText) > rr.width + 1) out.push(`${name}: its readout is cut`);
    }
    const select = c.querySelector('select');
    if (select) {
      const text = select.options[select.selectedIndex] ? select.options[select.selectedIndex].text : '';
      if (textWidth(select, text) > inner(select) + 1) out.push(`${name}: its value "${text}" is cut`);
    }
    const input = c.querySelector('input[type=text]');
    if (input && textWidth(input, input.value) > inner(input) + 1)
      out.push(`${name}: its value "${input.value}" is cut`);
  }
  return out;
}"""


def layout_problems(page: Any) -> list[str]:
    panel = page.evaluate_handle(_PANEL)
    return list(page.evaluate(_LAYOUT_PROBLEMS, panel))


# -- the tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with jupyter_lab(tmp_path_factory.mktemp("jupyterlab")) as started:
        _write_notebooks(started.root)
        yield started


@pytest.fixture(scope="module")
def page(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium")) as opened:
        yield opened


def _status(page: Any) -> str:
    return str(page.evaluate(_STATUS))


def _run_and_watch(page: Any, panel: Any, number: int) -> list[float]:
    """Press Run; wait for run ``number`` to be shown; the bar's widths (%) seen on the way."""
    page.evaluate(
        """(p) => { window.djqBar = []; const bar = p.querySelector('.widget-hprogress .progress-bar');
        new MutationObserver(() => window.djqBar.push(parseFloat(bar.style.width)))
          .observe(bar, {attributes: true, attributeFilter: ['style']}); }""",
        panel.element_handle(),
    )
    panel.locator("button[title='run a simulation with these options']").click()  # the Run button
    page.wait_for_function(
        "(n) => (" + _STATUS + ")().includes('#' + n + ' ') && !(" + _PANEL + ")()"
        ".querySelector(\"button[title='run a simulation with these options']\")"
        ".innerText.includes('Running')",
        arg=number,
        timeout=RUN_TIMEOUT_MS,
    )
    return list(page.evaluate("() => window.djqBar"))


@pytest.mark.timeout(600)
def test_the_lab_panel_in_a_browser(page: Any, server: Server, tmp_path: Path) -> None:
    """05_lab: every cell runs; the panel is widgets that fit; Run moves the bar, redraws, compares."""
    with screenshot_on_failure(page, tmp_path, "05_lab"):
        open_notebook(page, server, LAB)
        state = run_all_cells(page)
        errors = [e for c in state["cells"] for e in c["errors"]]
        assert not errors, f"{LAB}: cells failed: {errors}"
        assert page_problems(page) == []
        assert page.evaluate(_PANEL), "the panel did not render as widgets (a text repr instead?)"
        panel = page.locator(".jp-OutputArea-output .widget-vbox", has_text="djq lab").first
        assert panel.locator(".widget-slider").count() >= 4
        assert panel.locator("select").count() >= 3
        assert png_outputs(page) > 0
        assert figure_count(page) >= png_outputs(page) + 8  # the cells' figures, the panel's 5 + 3 plots
        for width, height in SIZES:  # the file browser open beside the notebook
            page.set_viewport_size({"width": width, "height": height})
            page.evaluate("() => window.jupyterapp.shell.activateById('filebrowser')")
            settle(page)
            assert page.locator("#filebrowser").is_visible()
            assert layout_problems(page) == [], f"at {width}x{height}"
        page.set_viewport_size({"width": 1280, "height": 800})
        settle(page)
        panel.scroll_into_view_if_needed()
        images = panel.locator(".widget-tab img")
        before = [images.nth(i).get_attribute("src") for i in range(images.count())]
        seen = _run_and_watch(page, panel, 3)
        assert any(0 <= s < 100 for s in seen), f"the bar did not move: {seen}"
        assert seen[-1] == 100, f"the bar did not end full: {seen}"
        assert "tasks acked" in _status(page)
        page.wait_for_function(  # drawn after the status line; fairness with 1 consumer may not change
            "(before) => { const now = [...("
            + _PANEL
            + ")().querySelectorAll('.widget-tab img')].map(i => i.src);"
            " return now.length >= 5 && now.slice(0, 5).filter((src, i) => src !== before[i]).length >= 3; }",
            arg=before[:5],
            timeout=RUN_TIMEOUT_MS,
        )
        panel.locator(".widget-dropdown", has_text="lock").locator("select").first.select_option("soft")
        _run_and_watch(page, panel, 4)
        assert "soft" in _status(page)
        panel.get_by_role("tab", name="Compare").click()
        table = panel.locator(".djq-compare table").first
        table.wait_for(state="visible")
        row = table.locator("tbody tr", has_text="#4 ")
        assert row.count() == 1
        assert "soft" in row.inner_text()
        assert row.locator("th").is_visible()  # the run label in view
        assert panel.locator(".djq-compare details").count() == 1  # the full table one click away
        assert page_problems(page) == []
        assert page.console_errors == [], f"console errors: {page.console_errors[:5]}"
        shut_down_kernel(page)


OTHERS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb") if p.name != LAB)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", OTHERS)
def test_a_notebook_runs_in_a_browser(page: Any, server: Server, tmp_path: Path, name: str) -> None:
    """Every cell runs with the CI parameters; no error, no traceback; every figure is an image."""
    with screenshot_on_failure(page, tmp_path, Path(name).stem):
        started = time.monotonic()
        page.console_errors.clear()
        open_notebook(page, server, name)
        state = run_all_cells(page)
        errors = [e for c in state["cells"] for e in c["errors"]]
        assert not errors, f"{name}: cells failed: {errors}"
        assert page_problems(page) == []
        assert figure_count(page) == png_outputs(page)
        assert page.console_errors == [], f"console errors: {page.console_errors[:5]}"
        shut_down_kernel(page)
        print(f"{name}: {time.monotonic() - started:.1f} s in the browser")
