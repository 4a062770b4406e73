"""Formats other tools read: export a trajectory store to, and import one from, LeRobot
(LeRobotDataset v3), Farama Minari and zarr v2 (diffusion_policy's replay buffer).

::

    robodistill store export --format lerobot|minari|zarr2 STORE OUT
    robodistill store import --format lerobot|minari|zarr2 IN STORE

Exports write episodes in seed order; an export followed by an import gives the same arrays,
episode boundaries and per-episode metadata back, and the store's attributes. See
``docs/concepts/interoperability.md`` for what goes where in each format. This module stays
light (the CLI imports it to build its parser); each format's module imports what it needs.
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Any

FORMATS = ("lerobot", "minari", "zarr2")
_MODULES = {"lerobot": "lerobot", "minari": "minari_format", "zarr2": "zarr2"}
_EXPORT_OPTIONS = {"lerobot": ("fps",), "minari": ("dataset_id",), "zarr2": ()}
_IMPORT_OPTIONS = {"lerobot": ("obs_key", "env_id"), "minari": ("env_id",),
                   "zarr2": ("obs_key", "env_id")}  # fmt: skip


def _module(fmt: str):
    from robodistill.data.formats.common import FormatError

    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return importlib.import_module(f"robodistill.data.formats.{_MODULES[fmt]}")


def _options(fmt: str, allowed: dict[str, tuple], options: dict[str, Any]) -> dict[str, Any]:
    from robodistill.data.formats.common import FormatError

    given = {k: v for k, v in options.items() if v is not None}
    wrong = sorted(set(given) - set(allowed[fmt]))
    if wrong:
        raise FormatError(f"{', '.join(wrong)} does not apply to the {fmt} format")
    return given


def export_store(
    store: str | os.PathLike,
    out: str | os.PathLike,
    format: str,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Export the trajectory store at ``store`` to ``out`` in ``format`` (one of
    :data:`FORMATS`); returns ``{"format", "episodes", "steps", "out"}``.

    Options: ``fps`` (lerobot; default the store's ``control_rate_hz``, else 10),
    ``dataset_id`` (minari; default ``out``'s name with ``-v0``). An existing ``out`` is
    replaced only with ``overwrite``."""
    mod = _module(format)
    return getattr(mod, f"export_{format}")(
        store, out, overwrite=overwrite, **_options(format, _EXPORT_OPTIONS, options)
    )


def import_store(
    src: str | os.PathLike,
    store: str | os.PathLike,
    format: str,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Create the trajectory store ``store`` from ``src`` in ``format``; returns
    ``{"format", "episodes", "steps", "store"}``.

    Options: ``obs_key`` (lerobot, zarr2: the source key to use as ``obs``), ``env_id`` (the
    env id of episodes whose file records none)."""
    mod = _module(format)
    return getattr(mod, f"import_{format}")(
        src, store, overwrite=overwrite, **_options(format, _IMPORT_OPTIONS, options)
    )


def add_commands(actions: argparse._SubParsersAction) -> None:
    """``store export`` and ``store import`` on the CLI's ``store`` subcommands."""
    p = actions.add_parser("export", help="write a store as lerobot, minari or zarr2")
    p.add_argument("--format", "-f", required=True, choices=FORMATS, help="the output format")
    p.add_argument("store", help="the store's .zarr folder")
    p.add_argument("out", help="the folder to write (must not exist unless --overwrite)")
    p.add_argument("--fps", type=float, help="lerobot: frames per second (default: the "
                   "store's control rate, else 10)")  # fmt: skip
    p.add_argument("--dataset-id", help="minari: the dataset id (default: OUT's name + -v0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p = actions.add_parser("import", help="create a store from lerobot, minari or zarr2")
    p.add_argument("--format", "-f", required=True, choices=FORMATS, help="the input format")
    p.add_argument("src", metavar="in", help="the dataset folder (minari: or a local id)")
    p.add_argument("store", help="the store's .zarr folder to create")
    p.add_argument("--obs-key", help="lerobot / zarr2: the key to use as observations "
                   "(default: observation.state / obs, else state)")  # fmt: skip
    p.add_argument("--env-id", help="env id for episodes whose file records none")
    p.add_argument("--overwrite", action="store_true", help="replace an existing STORE")


def run_command(args: argparse.Namespace) -> int:
    """Run ``store export`` / ``store import``; prints a one-line summary, returns 0."""
    if args.store_command == "export":
        r = export_store(args.store, args.out, args.format, overwrite=args.overwrite,
                         fps=args.fps, dataset_id=args.dataset_id)  # fmt: skip
        print(f"exported {r['episodes']} episodes ({r['steps']} steps) to {r['out']} "
              f"as {r['format']}, in seed order")  # fmt: skip
    else:
        r = import_store(args.src, args.store, args.format, overwrite=args.overwrite,
                         obs_key=args.obs_key, env_id=args.env_id)  # fmt: skip
        print(f"imported {r['episodes']} episodes ({r['steps']} steps) from {args.src} "
              f"({r['format']}) into {r['store']}")  # fmt: skip
    return 0
