"""A real headless Chromium, driven over the DevTools protocol through a pipe (no extra package).

Chromium comes from the system's packages (Debian: ``apt install chromium``; CI installs it).
``--remote-debugging-pipe`` makes it read NUL-terminated JSON commands on fd 3 and answer on
fd 4; this module speaks just enough of the protocol to load a page, evaluate JavaScript, take a
screenshot and collect every console error, uncaught exception and failed load.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from typing import Any

INSTALL_HINT = ("Chromium is needed for the report's browser test: on Debian or Ubuntu "
                "`sudo apt install chromium` (CI's .ci/run installs it)")


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _as_fds_3_and_4(commands: int, answers: int) -> None:
    """In the child: put the pipe ends on fds 3 and 4 (by way of fds 200 and 201, so neither
    clobbers the other when one of them already is 3 or 4)."""
    os.dup2(commands, 200)
    os.dup2(answers, 201)
    os.dup2(200, 3)
    os.dup2(201, 4)


class Browser:
    """One headless Chromium process; use as a context manager (the process is always reaped)."""

    def __init__(self, executable: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="maskcore-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child gets our pipe ends as its fds 3 (commands) and 4 (answers).
        self._proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
             "--disable-breakpad", "--disable-crash-reporter",
             "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
             "--window-size=1280,1600", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # Its own home, so nothing (crash reports, caches) is left in the user's.
            env={**os.environ, "HOME": self._profile, "XDG_CONFIG_HOME": self._profile,
                 "XDG_CACHE_HOME": self._profile},
            pass_fds=(3, 4), preexec_fn=lambda: _as_fds_3_and_4(to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._ids = itertools.count(1)
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as fh:
            while chunk := fh.read(65536):
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    msg = json.loads(raw)
                    if "id" in msg:
                        with self._lock:
                            box = self._answers.get(msg["id"])
                        if box is not None:
                            box.put(msg)
                    else:
                        self.events.put(msg)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Run one protocol command; returns its result or raises with its error."""
        msg_id = next(self._ids)
        box: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._answers[msg_id] = box
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        answer = box.get(timeout=self.timeout)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def open(self, url: str) -> Page:
        """Load ``url`` in a new tab and wait for its load event."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(self, session)
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session)
        self.send("Page.navigate", session, url=url)
        page.wait_for("Page.loadEventFired")
        return page

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.close(self._to_browser)  # Chromium exits when its command pipe closes
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        finally:
            self._reader.join(timeout=10)
            shutil.rmtree(self._profile, ignore_errors=True)


class Page:
    """A tab: its JavaScript, its screenshot, and the errors it reported."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.errors: list[str] = []

    def _note(self, msg: dict[str, Any]) -> None:
        if msg.get("sessionId") != self.session:
            return
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url')}")

    def wait_for(self, method: str) -> None:
        while True:
            msg = self.browser.events.get(timeout=self.browser.timeout)
            self._note(msg)
            if msg.get("method") == method and msg.get("sessionId") == self.session:
                return

    def drain(self) -> list[str]:
        """Every error reported so far."""
        while not self.browser.events.empty():
            self._note(self.browser.events.get_nowait())
        return self.errors

    def evaluate(self, expression: str) -> Any:
        result = self.browser.send("Runtime.evaluate", self.session, expression=expression,
                                   returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        """PNG of the page as it shows."""
        data = self.browser.send("Page.captureScreenshot", self.session, format="png")["data"]
        return base64.b64decode(data)
