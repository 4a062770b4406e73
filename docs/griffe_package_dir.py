"""Griffe extension: find the subpackages that ``pyproject.toml`` maps to other folders.

``[tool.setuptools] package-dir`` installs ``envs/`` as ``robodistill.envs`` (and likewise
``policies/``, ``deploy/``). Griffe's static analysis walks the file tree under
``robodistill/`` and would not find them, so once it has loaded the top package this
extension loads each mapped folder and attaches it under its installed name. The mapping is
read from ``pyproject.toml``, so moving modules inside these folders needs no change here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import griffe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """Installed dotted name -> source folder, from ``[tool.setuptools] package-dir``."""
    with open(root / "pyproject.toml", "rb") as f:
        setuptools = tomllib.load(f).get("tool", {}).get("setuptools", {})
    return {name: root / folder for name, folder in setuptools.get("package-dir", {}).items()}


class PackageDirs(griffe.Extension):
    """Attach every mapped subpackage (``robodistill.envs`` -> ``envs/``) to its parent."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        mapped = [name for name in package_dirs() if name.startswith(pkg.name + ".")]
        for name in sorted(mapped, key=lambda n: n.count(".")):
            folder = package_dirs()[name]
            *parents, leaf = name.split(".")[1:]
            parent = pkg
            try:
                for part in parents:
                    parent = parent.get_member(part)
            except KeyError:
                continue
            if leaf in parent.members or not (folder / "__init__.py").is_file():
                continue
            sub = loader.load(folder, submodules=True)
            sub.name = leaf
            parent.set_member(leaf, sub)
