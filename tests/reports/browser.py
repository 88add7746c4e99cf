"""A small headless-Chromium driver over the DevTools protocol (CDP), for the report tests.

No Selenium or Playwright: Debian's ``chromium`` started with ``--remote-debugging-port=0`` and one
websocket (``websocket-client``, already a dependency of the Kubernetes client). The protocol gives
what a screenshot from the command line cannot: console errors and CSP violations of every frame,
JavaScript evaluated inside a sandboxed ``srcdoc`` iframe (an isolated world ignores the page's
Content-Security-Policy and the sandbox), frame navigations, and clipped screenshots.

Site isolation is switched off so that KFP's sandboxed iframe stays in the page's process: its
frame, console and navigations are then seen by the one page session.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Flags for a closed network and a throwaway profile (without them a headless start can stall).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--disable-site-isolation-trials",
    "--disable-features=IsolateSandboxedIframes,site-per-process,Translate,MediaRouter",
    "--force-device-scale-factor=1",
)


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary on ``PATH``, or ``$AITASKS_CHROMIUM``."""
    explicit = os.environ.get("AITASKS_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


#: Events that announce a navigation of a frame (besides ``Page.frameNavigated``, which carries a frame).
_NAVIGATING = {"Page.frameRequestedNavigation", "Page.frameStartedNavigating", "Page.navigatedWithinDocument"}


class BrowserError(RuntimeError):
    """The browser did not start or did not answer a command."""


@dataclass
class Frame:
    id: str
    url: str
    parent: str | None


@dataclass
class Page:
    """One tab, attached through a flat session of the browser's websocket."""

    browser: Browser
    session: str
    target: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session)

    def open(self, url: str, *, timeout_s: float = 30.0) -> None:
        """Navigate and wait for the load event (images decoded, iframes loaded)."""
        mark = len(self.events)
        self.send("Page.navigate", {"url": url})
        self.browser.wait(lambda: any(e["method"] == "Page.loadEventFired" for e in self.events[mark:]), timeout_s)

    def frames(self) -> list[Frame]:
        out: list[Frame] = []

        def walk(node: dict[str, Any]) -> None:
            f = node["frame"]
            out.append(Frame(id=f["id"], url=f.get("url", "") + f.get("urlFragment", ""), parent=f.get("parentId")))
            for child in node.get("childFrames", []):
                walk(child)

        walk(self.send("Page.getFrameTree")["frameTree"])
        return out

    def evaluate(self, expression: str, frame: Frame | None = None) -> Any:
        """Evaluate in ``frame`` (default: the top frame) in an isolated world; returns the JSON value."""
        frame = frame or self.frames()[0]
        ctx = self.send("Page.createIsolatedWorld", {"frameId": frame.id, "worldName": "report-check"})
        res = self.send(
            "Runtime.evaluate",
            {"expression": expression, "contextId": ctx["executionContextId"], "returnByValue": True},
        )
        if "exceptionDetails" in res:
            raise BrowserError(f"evaluation failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, clip: tuple[float, float, float, float] | None = None) -> bytes:
        """A PNG of the page (document coordinates ``(x, y, width, height)``), default the whole page."""
        if clip is None:
            w, h = self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]",
            )
            clip = (0, 0, w, h)
        x, y, w, h = clip
        res = self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": x, "y": y, "width": w, "height": h, "scale": 1},
            },
        )
        return base64.b64decode(res["data"])

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (CSP violations, failed loads)."""
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in {"error", "assert"}:
                out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def navigations(self, since: int = 0) -> list[tuple[str, str]]:
        """``(frame id, url)`` of every navigation requested or committed after event ``since``."""
        out = []
        for e in self.events[since:]:
            p = e.get("params", {})
            if e["method"] == "Page.frameNavigated":
                out.append((p["frame"]["id"], p["frame"].get("url", "")))
            elif e["method"] in _NAVIGATING:
                out.append((p["frameId"], p.get("url", "")))
        return out


class Browser:
    """A headless Chromium process and its DevTools websocket."""

    def __init__(self, binary: str, workdir: Path, *, timeout_s: float = 30.0) -> None:
        import websocket

        self.workdir = workdir
        self.timeout_s = timeout_s
        import tempfile

        workdir.mkdir(parents=True, exist_ok=True)
        # A fresh profile each time: a stale DevToolsActivePort would name a dead port.
        profile = Path(tempfile.mkdtemp(prefix="profile-", dir=workdir))
        self.log_path = workdir / "chromium.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BrowserError(f"chromium did not start: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout_s, suppress_origin=True)
        self._next = 0
        self.pages: dict[str, Page] = {}
        self.browser_events: list[dict[str, Any]] = []

    def _receive(self) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(self.ws.recv())
        if "id" not in msg:
            page = self.pages.get(msg.get("sessionId", ""))
            (page.events if page else self.browser_events).append(msg)
        return msg

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> dict[str, Any]:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            reply = self._receive()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
        raise BrowserError(f"{method}: no answer in {self.timeout_s} s")

    def wait(self, done: Callable[[], bool], timeout_s: float) -> None:
        """Read events until ``done()`` or the timeout."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout_s} s")
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self._receive()
            except Exception as exc:  # websocket timeout: check done() once more, then give up
                if not done() and time.monotonic() > deadline:
                    raise BrowserError(f"timed out after {timeout_s} s") from exc
            finally:
                self.ws.settimeout(self.timeout_s)

    def settle(self, seconds: float) -> None:
        """Read events for ``seconds`` (navigations a click may have started)."""
        end = time.monotonic() + seconds
        with contextlib.suppress(BrowserError):
            self.wait(lambda: time.monotonic() >= end, seconds + 1.0)

    def new_page(self, width: int = 1200, height: int = 900) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        self.pages[session] = page
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.send("Page.setLifecycleEventsEnabled", {"enabled": True})
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page

    def close_page(self, page: Page) -> None:
        self.send("Target.closeTarget", {"targetId": page.target})
        self.pages.pop(page.session, None)

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                with contextlib.suppress(Exception):  # already gone: the process is ended below
                    self.ws.send(json.dumps({"id": 10**9, "method": "Browser.close"}))
                self.ws.close()
        finally:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._log.close()


@contextmanager
def chromium(workdir: Path, binary: str) -> Iterator[Browser]:
    browser = Browser(binary, workdir)
    try:
        yield browser
    finally:
        browser.close()
