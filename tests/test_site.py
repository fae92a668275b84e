"""The documentation site, built as ``scripts/docs`` builds it, checked in a real browser.

The site is built with ``mkdocs build --strict`` (any warning fails), served from
127.0.0.1 by Python's ``http.server`` (Material's search runs in a web worker, which a
``file://`` page may not start), and every page is opened in Debian's headless
Chromium: no console error, no uncaught exception, no failed request, no request
to anything but the local server, every ``<a href>`` to a page of the site points at a
file that exists (and at an element that exists, for ``#fragment`` links), and typing a
word into the search box lists pages.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servers import need, skip_or_fail

ROOT = Path(__file__).resolve().parent.parent

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def pages(site: Path) -> list[str]:
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html"))


def test_scripts_docs_fails_on_warnings() -> None:
    # --strict turns warnings into a failure only if they are emitted: --quiet
    # (or -q) drops them first and the build then passes with a broken link.
    command = (ROOT / "scripts" / "docs").read_text().split("exec ", 1)[1]
    assert "--strict" in command
    assert "--quiet" not in command and " -q" not in command


def search(page: Any, box: Any, word: str) -> list[str]:
    """Type *word* into the search box until results naming it show (60 s at most)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    hits = page.locator(".md-search-result__item", has_text=re.compile(word, re.I))
    for _ in range(12):
        box.fill("")
        box.press_sequentially(word, delay=30)
        try:
            hits.first.wait_for(timeout=5_000)
        except PlaywrightTimeoutError:  # the index was not ready yet: type it again
            continue
        texts: list[str] = page.locator(".md-search-result__item").all_inner_texts()
        return texts
    raise AssertionError(f"searching for {word!r} showed no result within 60 s")


def test_the_build_has_a_page_for_every_markdown_file(site: Path) -> None:
    docs = ROOT / "docs"
    expected = {str(p.relative_to(docs).with_suffix(".html")) for p in docs.rglob("*.md")}
    assert expected <= set(pages(site))
    # The reference really was generated from the docstrings.
    pool = (site / "reference" / "pool.html").read_text()
    assert "conpool.Pool" in pool and "acquire_timeout" in pool
    assert ":class:" not in pool and ":meth:" not in pool  # the roles became links
    # Snippets were included, not left as a "--8<--" line.
    assert "--8&lt;--" not in (site / "benchmarks.html").read_text()
    assert "Soak" in (site / "reliability.html").read_text()


def test_every_page_loads_offline_with_no_error_and_no_broken_link(site: Path, served: str) -> None:
    executable = need("chromium", "the documentation site is checked in headless Chromium")
    try:
        from playwright.sync_api import Request, sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    problems: list[str] = []
    outside: list[str] = []
    links: dict[str, set[str]] = {}  # target page -> fragments wanted there
    ids: dict[str, set[str]] = {}
    all_pages = pages(site)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context()

            # Nothing may leave the machine: record and refuse any other host.
            def route(r: object) -> None:
                request: Request = r.request  # type: ignore[attr-defined]
                if request.url.startswith(served) or request.url.startswith("data:"):
                    r.continue_()  # type: ignore[attr-defined]
                else:
                    outside.append(request.url)
                    r.abort()  # type: ignore[attr-defined]

            context.route("**/*", route)
            page = context.new_page()
            current = [""]
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"{current[0]}: console {msg.type}: {msg.text}")
                    if msg.type == "error"
                    else None
                ),
            )
            page.on("pageerror", lambda exc: problems.append(f"{current[0]}: {exc}"))
            page.on(
                "requestfailed",
                lambda req: problems.append(f"{current[0]}: failed {req.url}"),
            )
            page.on(
                "response",
                lambda res: (
                    problems.append(f"{current[0]}: HTTP {res.status} {res.url}")
                    if res.status >= 400
                    else None
                ),
            )
            for name in all_pages:
                current[0] = name
                url = urllib.parse.urljoin(served, name)
                page.goto(url, wait_until="load")
                page.wait_for_load_state("networkidle")
                hrefs: list[str] = page.eval_on_selector_all(
                    "a[href]", "els => els.map(e => e.href)"
                )
                ids[name] = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
                for href in hrefs:
                    if not href.startswith(served):
                        continue
                    target, _, fragment = href[len(served) :].partition("#")
                    target = urllib.parse.unquote(target) or "index.html"
                    if target.endswith("/"):
                        target += "index.html"
                    links.setdefault(target, set())
                    if fragment:
                        links[target].add(urllib.parse.unquote(fragment))
            assert page.title()
            # The search: type a word, and results appear. Material builds its index in
            # a web worker after the page loads; a query typed before the index is
            # ready shows nothing until the next keystroke, so type it again.
            current[0] = "search"
            page.goto(served, wait_until="load")
            page.locator("label.md-search__icon, .md-search__input").first.click()
            box = page.locator("input.md-search__input")
            titles = search(page, box, "ejection")
            postgres = search(page, box, "PostgreSQL")
        finally:
            browser.close()
    assert outside == [], "the site must work offline"
    assert problems == []
    assert len(all_pages) >= 25
    # The crawl saw the site's own links (every page is in the navigation), and
    # links into the middle of pages (the API reference's cross-references).
    assert set(all_pages) - {"404.html"} <= set(links)
    assert sum(len(wanted) for wanted in links.values()) >= 50
    broken = [t for t in links if not (site / t).is_file()]
    assert broken == []
    missing = [
        f"{t}#{f}" for t, wanted in links.items() for f in wanted if f not in ids.get(t, set())
    ]
    assert missing == []
    assert any(re.search("eject", t, re.I) for t in titles), titles
    assert any("PostgreSQL" in t for t in postgres), postgres
