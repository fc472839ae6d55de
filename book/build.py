"""Execute the notebooks and build the Jupyter Book, offline. Called by `make book`.

    python book/build.py [execute] [smoke] [vendor] [build] [--notebooks 00_tour,01_...] [-p NAME VALUE ...]

1. execute: every `notebooks/NN_*.ipynb` (outputs never committed) is run with papermill
   into `book/chapters/` (git-ignored) with its default, CPU-sized parameters or the
   `-p` overrides; per-notebook wall times go to `book/_build/timings.json`.
   smoke: the same chapters with their parameters cut to a few questions (:data:`SMOKE`), not executed,
   into ``book/_build/smoke/``: ``make book`` validates those with nbval (every cell runs without an
   error at a second setting of the parameters), instead of running the book's copies a second time.
2. vendor: MathJax 3, RequireJS and the ipywidgets HTML manager come from the npm registry
   (`npm pack`, cached in `.cache/npm/`) into `book/_vendor/`, so that pages load nothing
   from a CDN.
3. build: the shipped models' cards (`data/models/*/README.md`) become pages under
   `book/models/` (git-ignored; YAML front matter dropped), then `jupyter-book build` (1.x) with warnings as errors, then a check that no built
   page loads a script or stylesheet from a CDN (sphinx-thebe's URL constant stays: thebe is
   off and never loads; tests/test_book_site.py proves in a browser that nothing leaves
   127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
NOTEBOOKS = ROOT / "notebooks"
CHAPTERS = BOOK / "chapters"
MODELS = ROOT / "data" / "models"
CARDS = BOOK / "models"
VENDOR = BOOK / "_vendor"
CACHE = ROOT / ".cache" / "npm"
NPM_PACKAGES = {  # npm package -> folder under book/_vendor
    "mathjax@3.2.2": "mathjax",
    "requirejs@2.3.8": "requirejs",
    "@jupyter-widgets/html-manager@1.0.15": "html-manager",
}
CDN_HOSTS = ("cdn.jsdelivr.net", "cdnjs.cloudflare.com", "unpkg.com")


def notebooks(names: list[str] | None = None) -> list[Path]:
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if names:
        unknown = set(names) - {p.stem for p in found}
        if unknown:
            raise SystemExit(f"unknown notebooks: {sorted(unknown)}; have {[p.stem for p in found]}")
        found = [p for p in found if p.stem in names]
    return found


def execute(names=None, parameters: dict | None = None) -> dict[str, float]:
    import papermill

    CHAPTERS.mkdir(exist_ok=True)
    env_backup = os.environ.pop("MPLBACKEND", None)  # with Agg, plt.show() draws nothing
    timings = {}
    try:
        for path in notebooks(names):
            start = time.perf_counter()
            print(f"[execute] {path.name} ...", flush=True)
            papermill.execute_notebook(
                str(path), str(CHAPTERS / path.name), parameters=parameters or {}, kernel_name="python3",
                cwd=str(NOTEBOOKS), progress_bar=False, log_output=False,
            )
            timings[path.stem] = round(time.perf_counter() - start, 1)
            print(f"[execute] {path.name}: {timings[path.stem]} s", flush=True)
    finally:
        if env_backup is not None:
            os.environ["MPLBACKEND"] = env_backup
    out = BOOK / "_build" / "timings.json"
    out.parent.mkdir(exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous.update(timings)
    out.write_text(json.dumps(previous, indent=2))
    return timings


def _npm_pack(spec: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    name = spec.rsplit("@", 1)[0].lstrip("@").replace("/", "-")
    version = spec.rsplit("@", 1)[1]
    tarball = CACHE / f"{name}-{version}.tgz"
    if not tarball.exists():
        subprocess.run(["npm", "pack", spec, "--silent", "--pack-destination", str(CACHE)], check=True,
                       stdout=subprocess.DEVNULL)
    if not tarball.exists():
        raise SystemExit(f"npm pack {spec} did not produce {tarball}")
    return tarball


def vendor() -> None:
    """Unpack the front-end packages into book/_vendor (once)."""
    VENDOR.mkdir(exist_ok=True)
    for spec, folder in NPM_PACKAGES.items():
        target = VENDOR / folder
        if target.exists():
            continue
        with tarfile.open(_npm_pack(spec)) as tar:
            tar.extractall(VENDOR / ".unpack", filter="data")
        shutil.move(str(VENDOR / ".unpack" / "package"), str(target))
        shutil.rmtree(VENDOR / ".unpack")
    shutil.copy(VENDOR / "requirejs" / "require.js", VENDOR / "require.min.js")
    # RequireJS paths for the widget embedder, and a bridge from the widgets' MathJax 2 call
    # to the MathJax 3 the book serves (see the file).
    shutil.copy(BOOK / "_ext" / "widgets-config.js", VENDOR / "widgets-config.js")


def model_cards() -> list[Path]:
    """One book page per shipped model card, ``book/models/<model>.md``, front matter dropped."""
    CARDS.mkdir(exist_ok=True)
    pages = []
    for card in sorted(MODELS.glob("*/README.md")):
        text = card.read_text()
        if text.startswith("---\n"):
            text = text[text.index("\n---\n", 4) + 5:]
        page = CARDS / f"{card.parent.name}.md"
        page.write_text(text.lstrip("\n"))
        pages.append(page)
    return pages


def build() -> None:
    """Build the HTML book and fail if a page still loads something from a CDN."""
    started = time.perf_counter()
    model_cards()
    subprocess.run([str(Path(sys.executable).with_name("jupyter-book")), "build", str(BOOK), "-W", "-n", "--keep-going"],
                   check=True)
    html = BOOK / "_build" / "html"
    loads = re.compile(r"""(?:src|href)\s*=\s*["']https?://([^/"']+)""")
    offenders = [f"{p.relative_to(html)}: {host}" for p in html.rglob("*.html")
                 for host in loads.findall(p.read_text(errors="ignore")) if host in CDN_HOSTS]
    if offenders:
        raise SystemExit(f"pages still reference a CDN: {offenders}")
    seconds = round(time.perf_counter() - started, 1)
    timings = BOOK / "_build" / "timings.json"
    data = json.loads(timings.read_text()) if timings.exists() else {}
    data["book build"] = seconds
    timings.write_text(json.dumps(data, indent=2))
    print(f"[build] book built in {seconds} s: {html / 'index.html'}")


# Each chapter's parameters cut to a few questions, for the validation run (nbval): the book's copies run
# at the chapters' own sizes (execute); the smoke copies check that every chapter also runs, top to
# bottom and without an error, at another setting of its parameters, in a fraction of the time.
SMOKE = {
    "01_motivation_failures": {"n_questions": 24, "n_accuracy": 16},
    "02_entropy_analysis": {"n_questions": 16, "n_accuracy": 16},
    "03_submodular_selection": {"n_images": 8, "n_instances": 40, "timing_cases": "1x256x32", "timing_repeats": 1},
    "04_full_model_benchmarks": {"questions": 16, "efficiency_samples": 1, "efficiency_repeats": 1},
    "05_video_and_multicrop": {"n_clips": 6, "n_images": 6},
    "06_explorer": {"n_reliability": 16},
    "08_appendix_position_ids": {"spacing_questions": 16, "control_questions": 16},
}
SMOKE_DIR = BOOK / "_build" / "smoke"


def smoke(names=None) -> list[Path]:
    """Copies of the chapters with their smoke parameters injected (papermill, not executed), for nbval."""
    import papermill

    SMOKE_DIR.mkdir(parents=True, exist_ok=True)
    out = []
    for path in notebooks(names):
        target = SMOKE_DIR / path.name
        papermill.execute_notebook(str(path), str(target), parameters=SMOKE.get(path.stem, {}), prepare_only=True,
                                   kernel_name="python3", progress_bar=False, log_output=False)
        out.append(target)
    print(f"[smoke] {len(out)} chapters with smoke parameters in {SMOKE_DIR}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("steps", nargs="*", help="execute, vendor and/or build (default: all three, in order)")
    parser.add_argument("--notebooks", help="comma-separated notebook names (default: all)")
    parser.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                        help="papermill parameter override (value parsed as JSON when it can be)")
    args = parser.parse_args(argv)
    args.steps = args.steps or ["execute", "vendor", "build"]
    if set(args.steps) - {"execute", "smoke", "vendor", "build"}:
        parser.error(f"steps must be among execute, smoke, vendor, build; got {args.steps}")
    parameters = {}
    for name, value in args.p:
        try:
            parameters[name] = json.loads(value)
        except json.JSONDecodeError:
            parameters[name] = value
    names = args.notebooks.split(",") if args.notebooks else None
    if "execute" in args.steps:
        execute(names, parameters)
    if "smoke" in args.steps:
        smoke(names)
    if "vendor" in args.steps:
        vendor()
    if "build" in args.steps:
        build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
