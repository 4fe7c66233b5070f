"""A real headless Chromium driven over the DevTools protocol (one page): open a URL, wait for what a person
would see, click, read the page's text, take a screenshot. For the MLflow UI, a JavaScript app that
`chromium --dump-dom` cannot click through."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
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
