"""The docs site builds in strict mode, every page is in its nav, the README stays a front
page, and the code names the docs mention still exist."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# CI runs the README's test command; the quickstart must keep both commands as they are.
QUICKSTART = (
    "bash scripts/in_venv.sh robodistill pipeline   # the main job, default config",
    "bash scripts/in_venv.sh pytest                 # the test suite (what CI runs)",
)
# `robodistill.x.y` in backticks, and the modules of `from robodistill.x import ...` lines.
DOTTED = re.compile(r"`(robodistill(?:\.[A-Za-z_]\w*)+)")
FROM_IMPORT = re.compile(r"^\s*from (robodistill(?:\.\w+)*) import ([\w, ]+)$", re.M)


def _importable(name: str) -> bool:
    """Whether ``name`` is a module, or an attribute of its longest importable prefix."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def _doc_pages() -> set[str]:
    return {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}


def _nav_pages(nav) -> set[str]:
    pages: set[str] = set()
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages |= _nav_pages(value)
        else:
            pages.add(value)
    return pages


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-8000:]
    # The API reference covers the folders pyproject maps into the package, too.
    for module in ("robodistill.cli", "robodistill.envs", "robodistill.policies.base",
                   "robodistill.deploy.runtime"):  # fmt: skip
        assert (site / "reference" / module / "index.html").is_file(), module


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 300, "README.md: keep it a front page; move text to docs/"
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    for command in QUICKSTART:
        assert command in quickstart.splitlines(), command


def test_readme_links_exist():
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to missing {target}"


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    generated = {page for page in nav if page.endswith("/")}  # reference/: literate-nav
    assert generated == {"reference/"}
    assert sorted(_doc_pages() - nav) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(nav - generated - _doc_pages()) == [], "nav entries without a page"


def test_code_names_in_docs_exist():
    """Every ``robodistill.*`` name the docs mention resolves: statically (griffe reads the
    source), else by importing it."""
    griffe = pytest.importorskip("griffe")
    extension = griffe.load_extensions(f"{DOCS / 'griffe_package_dir.py'}:PackageDirs")
    loader = griffe.GriffeLoader(allow_inspection=False, extensions=extension)
    loader.load("robodistill")
    names: set[tuple[str, str]] = set()
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        text = path.read_text()
        names |= {(path.name, name) for name in DOTTED.findall(text)}
        for module, imported in FROM_IMPORT.findall(text):
            names |= {(path.name, f"{module}.{n.strip()}") for n in imported.split(",")}
    missing = []
    for page, name in sorted(names):
        try:
            loader.modules_collection[name]
        except KeyError:
            if not _importable(name):  # e.g. names a package's __getattr__ provides lazily
                missing.append(f"{page}: {name}")
    assert len(names) > 10
    assert missing == [], "docs name code that does not exist (moved?)"
