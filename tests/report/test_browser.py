"""The HTML report in a real browser: headless Chromium over the DevTools protocol (pipe transport, no extra package).

The report of a real `nnstab run` must load from a file with the network unused, log no console error,
and draw every plot with a non-zero size. Its screenshot is the README's reports/screenshot.png (written when
absent; NNSTAB_UPDATE_SCREENSHOT=1 renews it). Without chromium the test skips locally, and fails under CI=true.
"""
import base64
import fcntl
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from nnstab import cli

NAN_SCRIPT = Path(__file__).resolve().parents[1] / "commands" / "scripts" / "nan_train.py"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[2] / "reports" / "screenshot.png"
TIMEOUT_S = 60
# Flags of a quiet, offline, headless run as root: no sandbox (root), no GPU, and no background
# network traffic (update checks, sync) that a closed network would turn into errors.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--remote-debugging-pipe"]

if CHROMIUM is None:
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError("chromium is not installed; .ci/run installs Debian's chromium for this test")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test",
                allow_module_level=True)


class DevTools:
    """Chrome DevTools protocol over --remote-debugging-pipe: JSON messages ending in NUL on fds 3 (in) and 4 (out)."""

    def __init__(self, user_data_dir):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_pipes():  # in the child, before exec: the protocol reads fd 3 and writes fd 4
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4 first
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=wire_pipes, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._next_id, self.events = b"", 0, []

    def send(self, method, params=None, session=None):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        reply = self._until(lambda m: m.get("id") == self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method):
        seen = [e for e in self.events if e.get("method") == method]
        return seen[0] if seen else self._until(lambda m: m.get("method") == method)

    def _until(self, wanted):
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("chromium did not answer over the DevTools pipe")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (status {self.proc.poll()})")
            self._buffer += chunk

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def open_page(html: Path, profile: Path) -> tuple[DevTools, str]:
    """Chromium showing `html`, loaded: (devtools, session id); every event since the start is in devtools.events."""
    tools = DevTools(profile)
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Emulation.setDeviceMetricsOverride",
                   {"width": 1100, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        tools.send("Page.navigate", {"url": html.as_uri()}, session=session)
        tools.wait_event("Page.loadEventFired")
    except BaseException:
        tools.close()
        raise
    return tools, session


def console_errors(tools) -> list:
    return [e for e in tools.events
            if (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
            or e["method"] == "Runtime.exceptionThrown"
            or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]


def requests(tools) -> list[str]:
    return [e["params"]["request"]["url"] for e in tools.events if e["method"] == "Network.requestWillBeSent"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The report of a real `nnstab run` of a script that turns NaN, opened in Chromium: (devtools, session, url)."""
    folder = tmp_path_factory.mktemp("browser")
    here = os.getcwd()
    os.chdir(NAN_SCRIPT.parent)  # the command line in the report reads as a user would type it
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            status = cli.main(["run", "--out", str(folder), NAN_SCRIPT.name])
    finally:
        os.chdir(here)
    assert status == 1
    html = folder / "report.html"
    tools, session = open_page(html, folder / "profile")
    yield tools, session, html.as_uri()
    tools.close()


def test_the_harness_sees_console_errors_and_outside_requests(tmp_path):
    # the checks below are only worth something if a page that breaks them is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                   '<img src="http://127.0.0.1:9/missing.png"><script>console.error("broken")</script></body></html>')
    tools, _ = open_page(bad, tmp_path / "profile")
    try:
        assert any(e["method"] == "Runtime.consoleAPICalled" for e in console_errors(tools))
        assert "http://127.0.0.1:9/missing.png" in requests(tools)
    finally:
        tools.close()


def evaluate(tools, session, expression):
    result = tools.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
    return result["result"]["value"]


def test_page_loads_offline_with_no_console_error(page):
    tools, session, url = page
    assert evaluate(tools, session, "document.readyState") == "complete"
    assert console_errors(tools) == []
    assert requests(tools) == [url]  # the page itself, and nothing from anywhere else


def test_every_plot_renders_with_a_size(page):
    tools, session, _ = page
    sizes = evaluate(tools, session, """[...document.querySelectorAll('figure svg.plot')].map(s => {
        const r = s.getBoundingClientRect(); return [r.width, r.height, s.querySelectorAll('path').length]; })""")
    drawn = evaluate(tools, session, "[...document.querySelectorAll('h2[id^=plot-] + figure')].length")
    assert len(sizes) == drawn >= 3  # loss, gradient norms, activation ranges (+ dead/saturated units when recorded)
    for width, height, paths in sizes:
        assert width > 300 and height > 100 and paths > 10


def test_first_nonfinite_event_is_highlighted(page):
    tools, session, _ = page
    row = evaluate(tools, session, """(() => { const r = document.querySelector('tr.first-nonfinite');
        return [r.innerText, getComputedStyle(r.cells[0]).backgroundColor]; })()""")
    assert "norm" in row[0] and "nonfinite" in row[0] and re.search(r"steps? 12\b", row[0])
    assert row[1] not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")  # a coloured background, not the default


def test_screenshot_is_kept(page, tmp_path):
    tools, session, _ = page
    width, height = evaluate(tools, session, "[document.documentElement.scrollWidth, "
                                             "document.documentElement.scrollHeight]")
    shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                 "clip": {"x": 0, "y": 0, "width": width, "height": height,
                                                          "scale": 1}},
                      session=session)
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a full page with plots, not a blank one
    (tmp_path / "report.png").write_bytes(png)
    if not SCREENSHOT.exists() or os.environ.get("NNSTAB_UPDATE_SCREENSHOT"):  # the README's picture
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(png)
