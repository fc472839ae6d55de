"""The built book, served on 127.0.0.1 and opened in headless Chromium with the network cut off.

Run by `make book` after the build (marker `book`; needs book/_build/html, Debian's chromium
and the `playwright` package). Every chapter must load, its figures must decode, its math
must render (MathJax output, no raw TeX), it must carry no error output, widgets must render
from saved state, no table may run past the text column at 1280 px (it wraps or scrolls in its
own box: book/_css/eadp.css), and no request may leave 127.0.0.1. Screenshots go to
artifacts/book-screenshots/.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
SHOTS = ROOT / "artifacts" / "book-screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.book

PAGES = ["methods.html", "lmms_eval.html"]  # pages of book/*.md that must render like the chapters


def chapters() -> list[str]:
    pages = ["intro.html"] + sorted(str(p.relative_to(HTML)) for p in (HTML / "chapters").glob("*.html"))
    pages += [p for p in PAGES if (HTML / p).exists()]  # the book's own pages beside the chapters
    return pages


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail("the book is not built: run `make book` (book/_build/html is missing)")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.mark.parametrize("page", PAGES)
def test_the_books_own_pages_are_in_the_build(page):
    if not (HTML / "index.html").exists():
        pytest.fail("the book is not built: run `make book` (book/_build/html is missing)")
    assert (HTML / page).exists(), f"book/{Path(page).stem}.md is missing from the built book (book/_toc.yml)"


def test_every_chapter_is_in_the_build():
    built = {Path(p).stem for p in chapters()}
    wanted = {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert wanted <= built, f"chapters missing from the built book: {sorted(wanted - built)}"


@pytest.mark.parametrize("page_path", chapters())
def test_chapter_renders_offline(server, browser, page_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside, failed, errors = [], [], []

    def route(r):
        host = urlparse(r.request.url).hostname
        if host not in ("127.0.0.1", None):
            outside.append(r.request.url)
            return r.abort()
        return r.continue_()

    page.route("**/*", route)
    page.on("requestfailed", lambda req: failed.append(req.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(f"{server}/{page_path}", wait_until="load")
    assert response is not None and response.ok, page_path
    page.wait_for_timeout(1500)  # MathJax typesets and widgets render after load
    report = page.evaluate("""() => {
        const imgs = [...document.querySelectorAll('main img')];
        const text = document.querySelector('main').innerText;
        return {
          images: imgs.length,
          broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80)),
          mathSource: document.querySelectorAll('main .math').length,
          mathRendered: document.querySelectorAll('main mjx-container').length,
          rawTex: /\\\\(frac|sum|max)\\b/.test(text) && document.querySelectorAll('main mjx-container').length === 0,
          errorOutputs: document.querySelectorAll('main .output.error, main .output_error, main .traceback').length,
          tracebacks: /Traceback \\(most recent call last\\)/.test(text),
          widgetViews: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
          widgetsRendered: document.querySelectorAll('main .jupyter-widgets, main .widget-inline-hbox, main .lm-Widget').length,
          // a table wider than the text column must scroll inside its own box (book/_css/eadp.css), not run past it
          wideTables: (() => {
            const column = document.querySelector('.bd-article') || document.querySelector('main');
            const right = column.getBoundingClientRect().right;
            return [...document.querySelectorAll('main table')].filter(t => {
              if (t.getBoundingClientRect().right <= right + 1) return false;
              for (let e = t.parentElement; e && e !== column; e = e.parentElement) {
                const o = getComputedStyle(e).overflowX;
                if ((o === 'auto' || o === 'scroll') && e.getBoundingClientRect().right <= right + 1) return false;
              }
              return true;
            }).map(t => t.innerText.slice(0, 40).replace(/\\s+/g, ' '));
          })(),
          pageOverflow: document.documentElement.scrollWidth > window.innerWidth,
        };
    }""")
    page.screenshot(path=str(SHOTS / (Path(page_path).stem + ".png")), full_page=True)
    (SHOTS / (Path(page_path).stem + ".json")).write_text(json.dumps(report, indent=2))
    page.close()
    assert not outside, f"{page_path} tried to reach {outside[:5]}"
    assert not failed, f"{page_path}: failed requests {failed[:5]}"
    assert not errors, f"{page_path}: script errors {errors[:3]}"
    assert not report["broken"], f"{page_path}: figures that did not load {report['broken']}"
    assert report["mathRendered"] >= report["mathSource"] and not report["rawTex"], f"{page_path}: math not rendered"
    assert report["errorOutputs"] == 0 and not report["tracebacks"], f"{page_path}: error output on the page"
    assert not report["wideTables"], f"{page_path}: tables run past the text column at 1280 px {report['wideTables'][:3]}"
    assert not report["pageOverflow"], f"{page_path}: the page scrolls sideways at 1280 px"
    if report["widgetViews"]:
        assert report["widgetsRendered"] > 0, f"{page_path}: saved widgets did not render"
