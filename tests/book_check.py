"""Open every page of the built book in headless Chromium: it loads, its images are drawn, and
every internal link leads to a file (and, with a ``#fragment``, to an element of that page).

    python tests/book_check.py build/book/html          # what `make book-check` runs
    python tests/book_check.py build/book/html --chromium /usr/bin/chromium

Chromium is driven through its DevTools protocol (``--remote-debugging-port``, with the
``websocket-client`` package that Jupyter already brings): each page is navigated to, waited for
(load event), then a script in the page lists its images with whether they decoded
(``naturalWidth > 0``, lazy images forced to load), its links and its element ids. Links and
images off the site (the Colab badges, a CDN) are counted but not followed: the check runs offline. Exit status 1 and a
list of every problem if anything is broken.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

PAGE_SCRIPT = """(async () => {
  const images = [...document.images];
  images.forEach(img => { img.loading = "eager"; });
  await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener("load", done); img.addEventListener("error", done); setTimeout(done, 10000); })));
  return JSON.stringify({
    title: document.title,
    text: document.body ? document.body.innerText.length : 0,
    images: images.map(img => ({src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0})),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    ids: [...document.querySelectorAll("[id]")].map(e => e.id),
  });
})()"""


class Chromium:
    """A headless Chromium and one page target, spoken to over the DevTools protocol."""

    def __init__(self, executable: str):
        import websocket

        self.profile = tempfile.mkdtemp(prefix="book-check-")
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--allow-file-access-from-files", "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{executable} did not start its DevTools endpoint")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        page = next(t for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        self.call("Page.enable")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(e.get("method") == event for e in self.events):
                self.events = [e for e in self.events if e.get("method") != event]
                return
            self.events.append(json.loads(self.socket.recv()))
        raise TimeoutError(event)

    def open(self, url: str) -> dict:
        """Navigate, wait for the load event, and return what :data:`PAGE_SCRIPT` finds."""
        self.events.clear()
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"{url}: {result['errorText']}")
        self.wait_for("Page.loadEventFired")
        value = self.call("Runtime.evaluate", expression=PAGE_SCRIPT, awaitPromise=True, returnByValue=True)
        return json.loads(value["result"]["value"])

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)


def _local_path(url: str) -> tuple[Path, str] | None:
    """``(file, fragment)`` of a ``file://`` URL; ``None`` for anything off the site."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    return Path(unquote(parts.path)), unquote(parts.fragment)


def check_site(html_dir: Path, executable: str) -> tuple[list[str], dict[str, int]]:
    """Every problem found (empty: the site is intact) and counts of what was checked."""
    html_dir = html_dir.resolve()
    pages = sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)
    if not (html_dir / "index.html").is_file():
        return [f"{html_dir}/index.html is missing: build the book first (make book)"], {}
    problems, found = [], {}
    browser = Chromium(executable)
    try:
        for page in pages:
            try:
                found[page] = browser.open(page.as_uri())
            except (RuntimeError, TimeoutError) as err:
                problems.append(f"{page.relative_to(html_dir)}: did not load ({err})")
    finally:
        browser.close()
    counts = {"pages": len(found), "images": 0, "internal links": 0, "off-site images (not checked offline)": 0}
    for page, info in found.items():
        name = page.relative_to(html_dir)
        if not info["title"] or info["text"] == 0:
            problems.append(f"{name}: loaded empty (title {info['title']!r}, {info['text']} characters)")
        for image in info["images"]:
            if _local_path(image["src"]) is None and not image["src"].startswith("data:"):
                counts["off-site images (not checked offline)"] += 1  # e.g. the Colab badge
                continue
            counts["images"] += 1
            if not image["ok"]:
                problems.append(f"{name}: image not drawn: {image['src'][:120]}")
        for link in info["links"]:
            target = _local_path(link)
            if target is None:
                continue
            counts["internal links"] += 1
            path, fragment = target
            if path.is_dir():
                path = path / "index.html"
            if not path.exists():
                problems.append(f"{name}: broken link to {link}")
            elif fragment and path in found and fragment not in found[path]["ids"]:
                problems.append(f"{name}: link to {link}: no element with id {fragment!r} there")
    return problems, counts


def find_chromium(given: str | None) -> str | None:
    for name in [given] if given else ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", type=Path, nargs="?", default=Path("build/book/html"))
    parser.add_argument("--chromium", help="the browser executable (default: chromium on PATH)")
    args = parser.parse_args(argv)
    executable = find_chromium(args.chromium)
    if executable is None:
        print("error: no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    started = time.time()
    problems, counts = check_site(args.html_dir, executable)
    for problem in problems:
        print(problem)
    summary = ", ".join(f"{n} {what}" for what, n in counts.items())
    print(f"{'FAILED' if problems else 'ok'}: {summary} checked in {time.time() - started:.0f} s; {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
