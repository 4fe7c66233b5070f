"""A real headless Chromium driven over the DevTools protocol (one page): open a URL, wait for what a person
would see, click, read the page's text, take a screenshot. For the MLflow UI, a JavaScript app that
`chromium --dump-dom` cannot click through. And for a static page (the report), `open_in_chromium`: the DOM
that `chromium --dump-dom` gives, read by `Dom`."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one page; every wait is bounded by `timeout_s`."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000, timeout_s: float = 60.0):
        import websocket  # websocket-client, a test dependency

        if chromium() is None:
            pytest.skip("chromium not installed (apt-get install -y chromium; .ci/run does)")
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        self._until(lambda: port_file.is_file() and port_file.read_text().strip(), "Chromium's DevTools port")
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout_s)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events may come first
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        """What the page shows, non-breaking spaces as spaces."""
        return (self.js("document.body ? document.body.innerText : ''") or "").replace("\xa0", " ")

    def wait_for_text(self, *needles: str) -> str:
        """The page's text once it holds every needle (fails after `timeout_s`, showing what it held)."""
        return self._until(lambda: (t := self.text()) and all(n in t for n in needles) and t,
                           f"page text with {needles}", show=self.text)

    def click(self, label: str) -> None:
        """Click the first button (or link) whose visible text is `label`."""
        clicked = self.js(
            "(() => { const el = [...document.querySelectorAll('button, a, [role=button]')]"
            f".find(e => e.innerText.trim() === {json.dumps(label)}); if (el) {{ el.click(); return true; }}"
            " return false; })()")
        assert clicked, f"no button {label!r} on the page"

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            self.proc.wait(30)

    def _until(self, check, what: str, show=lambda: ""):
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"waited {self.timeout_s:.0f} s for {what}; the page held: {show()[:1500]!r}")

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Dom(HTMLParser):
    """Body attributes, images, and each table's header cells."""

    def __init__(self):
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.images: list[dict[str, str | None]] = []
        self.tables: list[list[str]] = []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.body = dict(attrs)
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag == "table":
            self.tables.append([])
        elif tag == "th":
            self._in_th = True
            self.tables[-1].append("")

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self._in_th:
            self.tables[-1][-1] += data


def parse_html(text: str) -> Dom:
    """`text` read by `Dom`."""
    dom = Dom()
    dom.feed(text)
    return dom


def open_in_chromium(page: Path, profile: Path) -> Dom:
    """The DOM of `page` after a real headless chromium loaded it (and ran its image check)."""
    if chromium() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium; .ci/run does)")
    run = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return parse_html(run.stdout)
