"""Generate the API reference: one page per module of the installed ``robodistill`` package.

Run by the ``gen-files`` plugin at every ``mkdocs build``. The modules are found through
the import machinery (``pkgutil.walk_packages``), so the folders that ``pyproject.toml``
maps into the package (``envs/`` -> ``robodistill.envs``, ...) are included and moving a
module needs no change to the docs. Each page holds ``::: dotted.name``; mkdocstrings
renders it by static analysis (griffe reads the source, nothing is imported), and
``SUMMARY.md`` is the section's navigation for the ``literate-nav`` plugin.

A package that fails to import (a dependency missing, or code in the middle of a move) is
not fatal: its submodules are then listed from its folder instead.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from griffe_package_dir import package_dirs  # noqa: E402

TOP = "robodistill"
log = logging.getLogger(f"mkdocs.plugins.{__name__}")


def _public(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


def _folder_modules(name: str, folder: Path) -> set[str]:
    """Dotted names of the package ``name`` in ``folder`` and everything below it."""
    found = {name}
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if all((folder.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(len(parts))):
            found.add(".".join((name, *parts)))
    return found


def _package_folder(name: str) -> Path | None:
    """Where the package ``name`` lives, without importing it."""
    mapped = package_dirs()
    if name in mapped:
        return mapped[name]
    parent, _, leaf = name.rpartition(".")
    for path in getattr(sys.modules.get(parent), "__path__", []):
        if (Path(path) / leaf / "__init__.py").is_file():
            return Path(path) / leaf
    return None


def module_names() -> list[str]:
    """Every public module of the package, found by importing its packages."""
    failed: list[str] = []
    try:
        top = importlib.import_module(TOP)
    except Exception as exc:  # noqa: BLE001 - fall back to the folders
        log.info("gen_ref_pages: import %s failed (%s); listing its folders", TOP, exc)
        names: set[str] = set()
        for name, folder in package_dirs().items():
            names |= _folder_modules(name, folder)
        return sorted(n for n in names if _public(n))
    # The top package's folder does not hold the packages that pyproject maps in from
    # elsewhere (robodistill.envs <- envs/): walk each of them through its own __path__ too.
    roots = {TOP: top.__path__}
    for name in package_dirs():
        if name.startswith(TOP + "."):
            try:
                roots[name] = importlib.import_module(name).__path__
            except Exception:  # noqa: BLE001 - listed from its folder below
                failed.append(name)
    names = set(roots)
    for root, path in roots.items():
        for info in pkgutil.walk_packages(path, root + ".", onerror=failed.append):
            names.add(info.name)
    for name in failed:
        folder = _package_folder(name)
        log.info("gen_ref_pages: import %s failed; listing %s", name, folder)
        if folder is not None:
            names |= _folder_modules(name, folder)
    return sorted(n for n in names if _public(n))


def main() -> None:
    nav = mkdocs_gen_files.Nav()
    for name in module_names():
        page = f"{name}.md"
        nav[tuple(name.split("."))] = page
        with mkdocs_gen_files.open(f"reference/{page}", "w") as f:
            f.write(f"::: {name}\n")
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as f:
        f.writelines(nav.build_literate_nav())


main()
