"""The documentation site (docs/): its code runs, it builds strictly, and a browser sees it.

* Every ```python block of every page in docs/ runs, page by page in one namespace, in order:
  blocks that start with ``>>>`` as doctests (their printed output is checked), the others as
  plain code. Docstring examples of the API reference run as doctests (``--doctest-modules``),
  the notebooks under nbmake.
* The site builds with ``sphinx-build -W --keep-going -n`` (any warning, including a broken
  cross-reference, fails) into a temporary folder.
* The API reference has every public name: ``jnorm.__all__``, the public modules of
  ``jnorm.linen`` and ``jnorm.nnx``, and every name of ``tests/registry.py``.
* Every internal link and image of the built HTML points to a file (and anchor) that exists.
* Headless Chromium opens the home page, an API page and a concepts page: MathJax typeset every
  formula (no raw TeX left), every local image loaded (``naturalWidth > 0``). Skipped only
  when Chromium is absent and ``CI`` is not set.
"""

from __future__ import annotations

import doctest
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import types
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# ------------------------------------------------------------------------ code on the pages

FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
# Blocks that cannot run inside one test process, and what runs that path for real instead.
NOT_RUN_HERE = {
    # needs several processes
    "jax.distributed.initialize()": "tests/distributed/test_multiprocess.py",
}


def _pages() -> list[Path]:
    """Pages with python blocks (the experiments' generated report has none)."""
    return sorted(p for p in DOCS.rglob("*.md")
                  if "_build" not in p.parts and "results" not in p.parts and _blocks(p))


def _blocks(page: Path) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(page.read_text())]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _blocks(page)
    monkeypatch.chdir(tmp_path)
    # A real module, so classes defined on the page (flax modules are dataclasses) find it.
    module = types.ModuleType(f"docs_page_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    ran = 0
    for i, block in enumerate(blocks):
        skip = [why for key, why in NOT_RUN_HERE.items() if key in block]
        if skip:
            assert all((ROOT / why).is_file() for why in skip), skip
            continue
        name = f"{page.relative_to(DOCS)} block {i + 1}"
        if block.lstrip().startswith(">>>"):
            test = parser.get_doctest(block, namespace, name, str(page), 0)
            result = runner.run(test, clear_globs=False)
            namespace.update(test.globs)  # DocTest ran on a copy: carry names to the next block
            assert result.failed == 0, f"{name}: {result.failed} example(s) failed (see above)"
        else:
            exec(compile(block, name, "exec"), namespace)
        ran += 1
    assert ran, f"{page}: no block ran"


# ------------------------------------------------------------------------------ the build


def _sphinx_build(out: Path) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
           "-d", str(out / "doctrees"), str(DOCS), str(out / "html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once per test session (shared by pytest-xdist workers via a lock)."""
    pytest.importorskip("sphinx", reason='the docs extra is not installed: pip install ".[docs]"')
    import fcntl

    base = tmp_path_factory.getbasetemp()  # under xdist, one folder per worker in the session's
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jnorm-docs-site"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = shared / "result.json"
        if not result.is_file():
            code, log = _sphinx_build(shared)
            result.write_text(json.dumps({"code": code, "log": log}))
        outcome = json.loads(result.read_text())
    if outcome["code"] != 0:
        pytest.fail(f"sphinx-build -W --keep-going -n failed:\n{outcome['log']}")
    return shared / "html"


def test_site_builds_without_warnings(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "_static" / "mathjax" / "tex-svg-full.js").is_file()  # offline MathJax


def _html_ids(path: Path) -> set[str]:
    return set(re.findall(r'\b(?:id|name)="([^"]+)"', path.read_text(errors="replace")))


def _public_classes(module, base) -> set[str]:
    import inspect

    return {n for n, obj in vars(module).items()
            if not n.startswith("_") and inspect.isclass(obj) and issubclass(obj, base)
            and obj.__module__ == module.__name__}


def test_api_reference_has_every_public_name(site: Path) -> None:
    import flax.linen as nn
    from flax import nnx

    import jnorm
    import jnorm.linen
    import jnorm.nnx
    from tests import registry

    documented = set().union(*(_html_ids(p) for p in (site / "api").glob("*.html")))
    wanted = {f"jnorm.{n}" for n in jnorm.__all__}
    wanted |= {f"jnorm.linen.{n}" for n in _public_classes(jnorm.linen, nn.Module)}
    wanted |= {f"jnorm.nnx.{n}" for n in _public_classes(jnorm.nnx, nnx.Module)}
    for entry in registry.REGISTRY:
        wanted.add(f"jnorm.{entry.name}")
        wanted |= {f"jnorm.{c}" for c in entry.companions}
        wanted |= {f"jnorm.linen.{mc.cls}" for mc in entry.linen}
        wanted |= {f"jnorm.nnx.{c}" for c in entry.nnx}
    wanted |= {f"jnorm.{n}" for n in registry.SUPPORT}
    missing = sorted(wanted - documented)
    assert not missing, f"public names missing from the API reference (docs/api/): {missing}"


# --------------------------------------------------------------------------------- links


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value and ((key == "href" and tag in ("a", "link")) or key == "src"):
                self.links.append((tag, value))


def test_internal_links_resolve(site: Path) -> None:
    ids: dict[Path, set[str]] = {}
    broken, external_code = [], []
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)  # not theme macros
    assert len(pages) > 20
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text(errors="replace"))
        for tag, url in parser.links:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme or url.startswith("//"):
                if tag in ("script", "link") and parts.scheme in ("http", "https"):
                    external_code.append(f"{page.relative_to(site)}: {url}")
                continue
            target = (page.parent / urllib.parse.unquote(parts.path)).resolve() \
                if parts.path else page
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {url}")
                continue
            if parts.fragment and target.suffix == ".html":
                if target not in ids:
                    ids[target] = _html_ids(target)
                if urllib.parse.unquote(parts.fragment) not in ids[target]:
                    broken.append(f"{page.relative_to(site)}: {url} (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:50])
    assert not external_code, "pages load code from the network:\n" + "\n".join(external_code)


# ---------------------------------------------------------------------- README and home page


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)\n```", text, re.S)
    assert m, f"README has no bash block after <!-- {marker} -->"
    return m.group(1).strip()


@pytest.mark.parametrize("marker", ["main-command", "test-command"])
def test_home_page_has_readme_install_commands(marker: str) -> None:
    assert _readme_block(marker) in (DOCS / "index.md").read_text(), (
        f"docs/index.md must show README's {marker} block verbatim")


# ----------------------------------------------------------------------------- a browser

CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  function report() {
    var local = Array.from(document.images).filter(function (i) {
      return i.src.startsWith("file:"); });
    var maths = Array.from(document.querySelectorAll(".math"));
    var out = {
      images: local.map(function (i) {
        return [i.getAttribute("src"), i.complete, i.naturalWidth]; }),
      math: maths.length,
      typeset: maths.filter(function (e) {
        return e.querySelector("mjx-container svg") !== null; }).length,
      raw: maths.filter(function (e) { return e.querySelector("mjx-container") === null; })
                .map(function (e) { return e.textContent.slice(0, 80); }),
      errors: document.querySelectorAll("[data-mjx-error], mjx-merror").length,
      text: document.body.innerText.length
    };
    var pre = document.createElement("pre");
    pre.id = "jnorm-check";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(report, report);
  } else { report(); }
});
</script>
"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _browse(browser: str, page: Path) -> dict:
    """Opens a copy of `page` (beside it, so relative paths hold) with CHECK_SCRIPT added and
    returns what the script saw once the page loaded and MathJax finished."""
    probe = page.with_name(page.stem + "__check.html")
    probe.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    try:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--virtual-time-budget=15000", "--dump-dom",
             probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    m = re.search(r'<pre id="jnorm-check"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the check script did not report on {page.name}:\n{proc.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


# page: (formulas at least, local images at least)
BROWSED = {
    "index.html": (1, 0),
    "api/jnorm.html": (10, 0),
    "concepts/scheme.html": (5, 5),  # the cube figures
    "evidence/experiments.html": (0, 9),  # the experiments' figures
}


@pytest.mark.parametrize("page", sorted(BROWSED))
def test_browser_renders_page(site: Path, page: str) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI (.ci/run installs Debian's chromium)")
        pytest.skip("no Chromium here (apt-get install chromium)")
    seen = _browse(browser, site / page)
    min_math, min_images = BROWSED[page]
    assert seen["text"] > 500, seen
    assert seen["math"] >= min_math, f"{page}: {seen['math']} formulas, expected {min_math}+"
    assert not seen["raw"], f"{page}: formulas left as raw TeX: {seen['raw'][:5]}"
    assert seen["typeset"] == seen["math"] and seen["errors"] == 0, seen
    assert len(seen["images"]) >= min_images, seen["images"]
    broken = [src for src, complete, width in seen["images"] if not complete or width == 0]
    assert not broken, f"{page}: images that did not load: {broken}"


def test_new_top_level_pages_join_the_site(tmp_path: Path) -> None:
    """A docs/*.md page another branch adds appears in the home page's "More pages" toctree;
    pages the home page already places are not listed twice."""
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import jnorm_site
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    index = (DOCS / "index.md").read_text()
    for name in ("index", "benchmarks", "distributed", "qk_norm"):
        (tmp_path / f"{name}.md").write_text(f"# {name}\n")
    assert jnorm_site.more_pages(index, tmp_path) == ["qk_norm"]
    assert jnorm_site.more_pages(index, DOCS) == sorted(
        p.stem for p in DOCS.glob("*.md")
        if p.stem not in ("index", "benchmarks", "distributed", "code_map"))
