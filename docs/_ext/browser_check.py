"""Check the built HTML documentation in a real browser (headless Chromium) and save one screenshot per page.

Run after ``sphinx-build`` (``make docs`` does)::

    python docs/_ext/browser_check.py docs/_build/html --screenshots docs/_build/screenshots

Fails (exit status 1) on

- a broken internal link: an ``href`` to a file that was not built, or to an ``#anchor`` no element carries;
- a missing image: an ``<img src>`` that is not in the build (read from the HTML files), or an image the browser
  could not decode or load;
- a console error: ``console.error``, an uncaught exception, or a failed request to the docs themselves;
- a notebook cell output that contains ``Traceback``, ``WARNING`` or ``Warning:`` (the tutorials must run clean).

The pages are served from a local HTTP server (as Read the Docs serves them) and loaded one after the other in one
Chromium process driven over the DevTools protocol through a pipe (``--remote-debugging-pipe``): no extra Python
package and no download. Chromium cannot reach other hosts (``--host-resolver-rules``): requests to the internet are
listed, not failed, since the CI machine may be offline. Links and images are parsed from the HTML files with
:mod:`html.parser` (no browser needed); the browser adds what only a browser sees (decoding, scripts, console).

Install Chromium with ``apt-get install -y chromium`` (Debian/Ubuntu) or point ``--chromium`` at a Chrome binary.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fnmatch
import functools
import http.server
import json
import os
import posixpath
import queue
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: Words that must not appear in a rendered cell output.
BAD_OUTPUT = ("Traceback", "WARNING", "Warning:")
#: Folders of the build that hold no pages.
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads", "_modules"}
VIEWPORT = (1200, 900)
#: Screenshots stop at this height (px); the longest tutorials are a little shorter.
MAX_SHOT_HEIGHT = 20000


# ---------------------------------------------------------------------------------------------------------------------
# Static checks: links, images and cell outputs read from the HTML files
# ---------------------------------------------------------------------------------------------------------------------


class _PageParser(HTMLParser):
    """Collect ids, links, image sources and the text of notebook cell outputs of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.images: list[str] = []
        self.resources: list[str] = []
        self.outputs: list[str] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, opens a cell output)
        self._depth_in_output = 0
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "img" and "src" in a:
            self.images.append(a["src"])
        elif tag == "link" and a.get("href") and "stylesheet" in a.get("rel", ""):
            self.resources.append(a["href"])
        elif tag == "script" and a.get("src"):
            self.resources.append(a["src"])
        if tag in {"br", "img", "hr", "meta", "link", "input", "source", "wbr", "col", "area", "base", "embed"}:
            return  # void elements have no end tag
        opens = "cell_output" in a.get("class", "").split()
        if opens:
            if self._depth_in_output == 0:
                self._buf = []
            self._depth_in_output += 1
        self._stack.append((tag, opens))

    def handle_endtag(self, tag: str) -> None:
        # pop to the matching tag (tolerates unclosed <p>, <li>)
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                for _, opened in self._stack[i:]:
                    if opened:
                        self._depth_in_output -= 1
                        if self._depth_in_output == 0:
                            self.outputs.append("".join(self._buf))
                del self._stack[i:]
                break

    def handle_data(self, data: str) -> None:
        if self._depth_in_output:
            self._buf.append(data)


@dataclass
class Page:
    """One built page and what its HTML references."""

    path: Path
    rel: str
    parsed: _PageParser
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _is_external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme and parts.scheme != "file") or url.startswith("//")


def read_pages(root: Path) -> dict[str, Page]:
    """Parse every HTML page of the build."""
    pages = {}
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root).as_posix()
        if rel.split("/", 1)[0] in SKIP_DIRS:
            continue
        parser = _PageParser()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        pages[rel] = Page(path, rel, parser)
    return pages


def _ids_of(root: Path, rel: str, pages: dict[str, Page], cache: dict[str, set[str]]) -> set[str]:
    if rel in pages:
        return pages[rel].parsed.ids
    if rel not in cache:
        p = _PageParser()
        p.feed((root / rel).read_text(encoding="utf-8", errors="replace"))
        cache[rel] = p.ids
    return cache[rel]


def static_checks(root: Path, pages: dict[str, Page]) -> None:
    """Broken internal links and anchors, missing images and resources, bad words in cell outputs."""
    extra_ids: dict[str, set[str]] = {}
    for page in pages.values():
        here = posixpath.dirname(page.rel)
        refs = (("link", page.parsed.links), ("image", page.parsed.images), ("resource", page.parsed.resources))
        for kind, urls in refs:
            for url in urls:
                if not url or _is_external(url) or url.startswith(("mailto:", "javascript:", "data:")):
                    continue
                parts = urlsplit(url)
                target = page.rel if not parts.path else posixpath.normpath(posixpath.join(here, unquote(parts.path)))
                if target.startswith(".."):
                    page.problems.append(f"{kind} leaves the documentation: {url}")
                    continue
                file = root / target
                if file.is_dir():
                    target = posixpath.join(target, "index.html")
                    file = root / target
                if not file.is_file():
                    page.problems.append(f"broken {kind}: {url} (no {target})")
                    continue
                frag = unquote(parts.fragment)
                is_page = kind == "link" and frag and target.endswith(".html")
                if is_page and frag not in _ids_of(root, target, pages, extra_ids):
                    page.problems.append(f"broken anchor: {url} (no id {frag!r} in {target})")
        for text in page.parsed.outputs:
            for word in BAD_OUTPUT:
                if word in text:
                    i = text.index(word)
                    snippet = " ".join(text[max(0, i - 80) : i + 160].split())
                    page.problems.append(f"cell output contains {word!r}: ...{snippet}...")


# ---------------------------------------------------------------------------------------------------------------------
# Browser checks over the DevTools protocol (pipe transport: JSON messages separated by NUL bytes on fds 3 and 4)
# ---------------------------------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class Browser:
    """A headless Chromium driven through ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, profile: Path) -> None:
        self._cmd_r, self._cmd_w = os.pipe()  # we write commands, Chromium reads (its fd 3)
        self._res_r, self._res_w = os.pipe()  # Chromium writes replies and events (its fd 4), we read
        cmd_r, res_w = self._cmd_r, self._res_w

        def _child_fds() -> None:  # runs in the child before exec: put the pipe ends on fds 3 and 4
            a, b = os.dup(cmd_r), os.dup(res_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [
            binary,
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
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--mute-audio",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={profile}",
            f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4, cmd_r, res_w),
            preexec_fn=_child_fds,  # started before any thread of this process
        )
        os.close(self._cmd_r)
        os.close(self._res_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self.events: queue.Queue[dict] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._res_r, "rb", buffering=0) as f:
            while True:
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                buf += chunk
                *msgs, buf = buf.split(b"\0")
                for raw in msgs:
                    msg = json.loads(raw)
                    if "id" in msg:
                        with self._cond:
                            self._replies[msg["id"]] = msg
                            self._cond.notify_all()
                    else:
                        self.events.put(msg)
        with self._cond:
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        """Send one command and wait for its reply."""
        self._next_id += 1
        msg_id = self._next_id
        msg: dict = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"Chromium did not answer {method} (exit status {self.proc.poll()})")
                self._cond.wait(min(left, 1.0))
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing anyway
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)


_IMAGES_JS = """
(async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r;
                                                                         setTimeout(r, 10000); })));
  return imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));
})()
"""


def _shot_name(rel: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "__", rel[: -len(".html")]) + ".png"


def browser_checks(browser: Browser, base_url: str, pages: dict[str, Page], shots: Path | None) -> None:
    """Load every page; record console errors, failed local requests and broken images; save screenshots."""
    for rel, page in pages.items():
        # a fresh tab per page: no scroll position or script state carried over from the previous page
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            tab = _Tab(browser, session, base_url)
            tab.load(rel, page)
            tab.check_images(page)
            if shots is not None:
                tab.screenshot(shots / _shot_name(rel))
        finally:
            browser.send("Target.closeTarget", {"targetId": target})


@dataclass
class _Tab:
    """One browser tab (a DevTools session) showing pages of the local server."""

    browser: Browser
    session: str
    base_url: str
    requests: dict[str, str] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.send(method)
        metrics = {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics)
        while not self.browser.events.empty():  # events of the previous tab
            self.browser.events.get_nowait()

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def _local(self, url: str) -> bool:
        return urlsplit(url).netloc == urlsplit(self.base_url).netloc

    def load(self, rel: str, page: Page) -> None:
        """Navigate and wait for the load event and a quiet network, recording what goes wrong on the way."""
        self.send("Page.navigate", {"url": f"{self.base_url}/{rel}"})
        deadline, loaded, quiet_since = time.monotonic() + 60, False, time.monotonic()
        while time.monotonic() < deadline:
            try:
                ev = self.browser.events.get(timeout=0.05)
            except queue.Empty:
                ev = None
            if ev is not None and ev.get("sessionId") == self.session:
                loaded = self._record(ev["method"], ev.get("params", {}), page) or loaded
                if self.pending:
                    quiet_since = time.monotonic()
            if loaded and not self.pending and time.monotonic() - quiet_since > 0.25:
                return
        page.problems.append("page did not finish loading within 60 s")

    def _record(self, method: str, p: dict, page: Page) -> bool:
        """Book one DevTools event; True for the page's load event."""
        if method == "Page.loadEventFired":
            return True
        if method == "Network.requestWillBeSent":
            self.requests[p["requestId"]] = p["request"]["url"]
            self.pending.add(p["requestId"])
        elif method == "Network.loadingFinished":
            self.pending.discard(p["requestId"])
        elif method == "Network.loadingFailed":
            self.pending.discard(p["requestId"])
            url = self.requests.get(p["requestId"], "?")
            if not self._local(url):
                page.notes.append(f"external request not loaded (offline check): {url}")
            elif not url.endswith("/favicon.ico"):  # the browser asks for it by itself
                page.problems.append(f"request failed: {url} ({p.get('errorText')})")
        elif method == "Network.responseReceived":
            url, status = p["response"]["url"], p["response"].get("status", 200)
            if status >= 400 and self._local(url) and not url.endswith("/favicon.ico"):
                page.problems.append(f"HTTP {status}: {url}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in {"error", "assert"}:
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            page.problems.append(f"console.{p['type']}: {text[:300]}")
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text", "")
            page.problems.append(f"uncaught exception: {text[:300]}")
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            e = p["entry"]
            url = e.get("url") or ""
            if not url.endswith("/favicon.ico") and (not url or self._local(url)):  # external: noted above
                page.problems.append(f"console ({e.get('source')}): {e.get('text', '')[:300]}")
        return False

    def check_images(self, page: Page) -> None:
        """Every <img> loaded and decoded (lazy images are made eager first)."""
        reply = self.send("Runtime.evaluate", {"expression": _IMAGES_JS, "awaitPromise": True, "returnByValue": True})
        for src in reply.get("result", {}).get("value") or []:
            page.problems.append(f"image not displayed: {src}")

    def screenshot(self, path: Path) -> None:
        """The whole page (up to MAX_SHOT_HEIGHT) at the viewport's width, as PNG.

        The viewport is made as tall as the page and the page laid out again before the capture (Chromium's
        ``captureBeyondViewport`` can lay wide pages out at another width).
        """
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        height = int(min(max(size["height"], VIEWPORT[1]), MAX_SHOT_HEIGHT))
        metrics = {"width": VIEWPORT[0], "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics)
        self.send("Runtime.evaluate", {"expression": _SETTLE_JS, "awaitPromise": True})
        clip = {"x": 0, "y": 0, "width": VIEWPORT[0], "height": height, "scale": 1}
        shot = self.send("Page.captureScreenshot", {"format": "png", "clip": clip}, 120)
        path.write_bytes(base64.b64decode(shot["data"]))


#: Scroll to the top and wait two frames, so that the page is laid out at the new size before a capture.
_SETTLE_JS = (
    "window.scrollTo(0, 0); new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"
)


def find_chromium(given: str | None) -> str | None:
    """The Chromium binary: ``given``, ``$CHROMIUM``, or the first of the usual names on ``PATH``."""
    for name in (given, os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path, help="the built HTML folder (docs/_build/html)")
    ap.add_argument("--screenshots", type=Path, default=None, help="folder for one PNG per page")
    ap.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH, or $CHROMIUM)")
    ap.add_argument("--no-browser", action="store_true", help="only the static checks (no Chromium needed)")
    ap.add_argument("--only", default=None, help="load only the pages matching this glob (e.g. 'tutorials/*')")
    args = ap.parse_args(argv)

    root = args.html.resolve()
    if not (root / "index.html").is_file():
        print(f"browser_check: no index.html in {root}; build the docs first", file=sys.stderr)
        return 2
    start = time.monotonic()
    pages = read_pages(root)
    static_checks(root, pages)
    if args.only:
        pages = {rel: p for rel, p in pages.items() if fnmatch.fnmatch(rel, args.only)}

    if not args.no_browser:
        binary = find_chromium(args.chromium)
        if binary is None:
            print("browser_check: Chromium not found (apt-get install -y chromium; or --chromium)", file=sys.stderr)
            return 2
        if args.screenshots is not None:
            shutil.rmtree(args.screenshots, ignore_errors=True)
            args.screenshots.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix="stmap-chromium-") as profile:
            browser = Browser(binary, Path(profile))  # before the server's thread: the child is forked single-threaded
            handler = functools.partial(_QuietHandler, directory=str(root))
            try:
                with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as server:
                    server.daemon_threads = True
                    threading.Thread(target=server.serve_forever, daemon=True).start()
                    base_url = f"http://127.0.0.1:{server.server_address[1]}"
                    browser_checks(browser, base_url, pages, args.screenshots)
                    server.shutdown()
            finally:
                browser.close()

    failed = {rel: p for rel, p in pages.items() if p.problems}
    notes = sorted({n for p in pages.values() for n in p.notes})
    for rel, page in failed.items():
        print(f"FAIL {rel}")
        for problem in dict.fromkeys(page.problems):
            print(f"    {problem}")
    for note in notes:
        print(f"note: {note}")
    where = f"; screenshots in {args.screenshots}" if args.screenshots is not None and not args.no_browser else ""
    print(f"browser_check: {len(pages)} pages, {len(failed)} with problems, {time.monotonic() - start:.0f} s{where}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
