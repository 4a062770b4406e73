"""The ``robodistill`` command.

::

    robodistill pipeline                                 # default config, every stage
    robodistill collect --env Hopper-v5 --episodes 100   # shortcuts for --set collect.episodes=100
    robodistill eval --config configs/pipelines/default.yaml --set eval.episodes=50
    robodistill collect --workers 2                      # episodes in 2 Ray actors
    robodistill config --show                            # the resolved configuration
    robodistill envs                                     # registered environments
    robodistill store verify runs/default/collect/demos.zarr   # check chunks and episodes
    robodistill store export --format lerobot runs/default/collect/demos.zarr out/   # interop

Every command that takes a configuration accepts ``--config FILE`` and any number of
``--set key.sub=value`` overrides; an invalid configuration stops before any work starts.

The commands import what they run inside their functions, on purpose: ``robodistill --help``
and ``robodistill envs`` should not pay seconds for torch, zarr and onnx.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_DAMAGED, EXIT_USAGE, EXIT_NOT_BUILT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
log = logging.getLogger("robodistill")

# Shortcut flags: (flag, dotted key, type, help) per command. ``--video`` alone means 3.
_ENV = ("--env", "env.id", str, "environment id")
_NUM_ENVS = ("--num-envs", "env.num_envs", int, "environments stepped together")
_SEED = ("--seed", "seed", int, "master seed")


def _rollout_flags(section: str, episodes: str, workers: str, *extra: tuple) -> list[tuple]:
    """The shortcuts of a stage that rolls a policy out (collect, eval)."""
    return [_ENV, ("--policy", f"{section}.policy", str, "'random' or a policy directory"),
            ("--episodes", f"{section}.episodes", int, episodes), *extra, _NUM_ENVS,
            ("--workers", f"{section}.workers", int, workers), _SEED]  # fmt: skip


SHORTCUTS: dict[str, list[tuple[str, str, type, str]]] = {
    "collect": _rollout_flags("collect", "episodes to store", "processes collecting in parallel"),
    "eval": _rollout_flags(
        "eval",
        "evaluation episodes",
        "processes evaluating in parallel",
        ("--video", "eval.video_episodes", int, "render the first N episodes to MP4"),
    ),  # fmt: skip
    "teach": [
        _ENV,
        ("--algo", "teach.algo", str, "rl100, ppo or sac"),
        ("--backend", "teach.backend", str, "sb3 or rllib"),
        ("--steps", "teach.total_timesteps", int, "environment steps to train for"),
        _NUM_ENVS,
        (
            "--workers",
            "teach.training.workers",
            int,
            "data-parallel training workers on Ray "
            "Train (rl100 imitation, COMPASS base; rllib: PPO learners)",
        ),
        _SEED,
    ],
    "distill": [
        ("--teacher", "distill.teacher", str, "teacher policy directory (default: the run's)"),
        _ENV,
        (
            "--workers",
            "distill.training.workers",
            int,
            "data-parallel training workers on Ray Train (consistency, streaming)",
        ),
        _SEED,
    ],
    "export": [
        ("--env", "env.id", str, "environment id (default: the one the policy was made on)"),
        ("--policy", "export.policy", str, "policy directory (default: the run's student/teacher)"),
        ("--exporter", "export.exporter", str, "dynamo or torchscript"),
        ("--opset", "export.opset", int, "ONNX opset (>= 17)"),
    ],
    "control": [
        ("--env", "env.id", str, "environment id (default: the one the model was exported for)"),
        ("--hz", "control.hz", float, "control rate in Hz (default: the env's)"),
        ("--episodes", "control.episodes", int, "episodes to run"),
        ("--on-fault", "control.on_fault", str, "continue or stop"),
        ("--realtime", "control.realtime_priority", int, "SCHED_FIFO priority (1-99)"),
        (
            "--policy-hz",
            "control.policy_hz",
            float,
            "policy rate when --hz is higher (interpolated between)",
        ),
        ("--interpolation", "control.interpolation", str, "linear, cubic, minjerk or hold"),
        _SEED,
    ],
    "pipeline": [_SEED],
}
CONFIG_COMMANDS = ("collect", "teach", "distill", "eval", "export", "control", "pipeline", "config")


def _add_config_args(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--config", "-c", help="YAML config file (default: built-in defaults, "
                   "the same as configs/pipelines/default.yaml)")  # fmt: skip
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config key, e.g. collect.episodes=20 "
                   "(repeatable; values are YAML)")  # fmt: skip
    p.add_argument("--name", help="run name (sets name=...)")
    p.add_argument("--runs-dir", help="where runs are written (sets runs_dir=...)")
    p.add_argument("--overwrite", action="store_true", help="move a stage directory made "
                   "with another configuration aside instead of refusing")  # fmt: skip
    for flag, key, typ, text in SHORTCUTS.get(command, []):
        extra = {"nargs": "?", "const": 3, "metavar": "N"} if flag == "--video" else {}
        extra.setdefault("metavar", key.rsplit(".", 1)[-1].upper())
        p.add_argument(flag, type=typ, dest=f"short:{key}", help=f"{text} (sets {key})", **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robodistill",
        description="Teachers in simulation, distilled into fast students, deployed as ONNX.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("envs", help="list environments, or describe one")
    p.add_argument("env_id", nargs="?", help="describe this id (spaces, control rate, layout)")
    p.add_argument("--all", action="store_true", help="list every gymnasium id, not just ours")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    helps = {
        "collect": "roll a policy out into the trajectory store",
        "teach": "train a teacher policy",
        "distill": "distill a teacher into a student",
        "eval": "evaluate a policy on fixed seeds",
        "export": "export a policy to ONNX",
        "control": "run an ONNX policy in a fixed-rate control loop",
        "pipeline": "run every configured stage and write the report",
        "config": "validate and print the resolved configuration",
    }
    for command in CONFIG_COMMANDS:
        p = sub.add_parser(command, help=helps[command])
        _add_config_args(p, command)
        if command in ("teach", "collect", "eval"):
            p.add_argument("--ray-address", help="join this Ray cluster (teach: RLlib backend; "
                           "collect/eval: --workers > 1 run in its actors); default: "
                           "$RAY_ADDRESS, else a local Ray for RLlib and local worker "
                           "processes, no Ray, for collect/eval")  # fmt: skip
        if command == "distill":
            p.add_argument("--ray-address", help="join this Ray cluster for --workers > 1; "
                           "default: $RAY_ADDRESS, else a local Ray")  # fmt: skip
        if command == "control":
            p.add_argument("model", nargs="?", help="ONNX file (sets control.model; default: "
                           "the run's export)")  # fmt: skip
            p.add_argument("--async", dest="short:control.mode", action="store_const",
                           const="async", help="plan chunks in a thread ahead of execution "
                           "(sets control.mode=async)")  # fmt: skip
            p.add_argument(
                "--rtc",
                dest="short:control.rtc",
                action="store_const",
                const=True,
                help="real-time chunking, with --async (sets control.rtc=true)",
            )
        if command == "config":
            p.add_argument("--keys", action="store_true",
                           help="list every key with its default and documentation")  # fmt: skip
    actions = sub.add_parser("store", help="check, export or import a trajectory store")
    actions = actions.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "verify", help="check every chunk and episode; names the damage, exit 1 if any"
    )
    p.add_argument("path", help="the store's .zarr folder")
    from robodistill.data.formats import add_commands  # light: argparse only

    add_commands(actions)  # store export / store import (lerobot, minari, zarr2)
    return parser


def resolve_config(args: argparse.Namespace):
    from robodistill.config import load_config

    overrides = list(args.overrides)
    if args.name:
        overrides.append(f"name={args.name}")
    if args.runs_dir:
        overrides.append(f"runs_dir={args.runs_dir}")
    if getattr(args, "model", None):
        overrides.append(f"control.model={json.dumps(args.model)}")
    for dest, value in vars(args).items():
        if dest.startswith("short:") and value is not None:
            overrides.append(f"{dest[len('short:') :]}={json.dumps(value)}")
    return load_config(args.config, overrides)


def cmd_envs(args: argparse.Namespace) -> int:
    import gymnasium as gym

    from robodistill.core.rollout import env_spaces
    from robodistill.envs import EXPERTS, ROBODISTILL_ENV_IDS
    from robodistill.envs.registry import embodiments

    if args.env_id:
        _, _, doc = env_spaces(args.env_id)
        print(json.dumps(doc, indent=2) if args.json else _describe_env(doc))
        return EXIT_OK
    if args.all:
        ids = sorted(gym.registry)
        print(json.dumps(ids) if args.json else "\n".join(ids))
        return EXIT_OK
    rows = []
    for env_id in ROBODISTILL_ENV_IDS:
        _, _, doc = env_spaces(env_id)
        rows.append(doc | {"embodiments": list(embodiments(env_id)),
                           "expert": env_id in EXPERTS})  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(
        f"{'id':<24}{'observation':<16}{'action':<12}{'rate':>7}{'steps':>7}  expert  embodiments"
    )
    for r in rows:
        print(f"{r['env_id']:<24}{_space(r['observation_space']):<16}"
              f"{_space(r['action_space']):<12}{r['control_rate_hz']:>5.0f}Hz"
              f"{r['max_episode_steps']:>7}  {'yes' if r['expert'] else 'no':<6}  "
              f"{', '.join(r['embodiments']) or '-'}")  # fmt: skip
    print("\nAny other gymnasium id works too (`robodistill envs --all`); `robodistill envs ID` "
          "describes one.")  # fmt: skip
    return EXIT_OK


def _space(s: dict) -> str:
    if s["type"] == "Box":
        return f"Box{tuple(s['shape'])}"
    return s["type"]


def _describe_env(doc: dict) -> str:
    def space(s: dict) -> str:
        return f"{_space(s)} {s['dtype']}" if s["type"] == "Box" else json.dumps(s)

    rate = doc["control_rate_hz"]
    lines = [
        doc["env_id"],
        f"  observation: {space(doc['observation_space'])}",
        f"  action:      {space(doc['action_space'])}",
        f"  control:     {f'{rate:g} Hz' if rate else 'unknown'}",
        f"  max steps:   {doc['max_episode_steps']}",
    ]
    if doc.get("observation_layout"):
        lines.append("  layout:      " + ", ".join(
            f"{p['key']}[{p['start']}:{p['stop']}]" for p in doc["observation_layout"]))  # fmt: skip
    return "\n".join(lines)


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from robodistill.config import describe

    if args.keys:
        print("\n".join(describe()))
        return EXIT_OK
    cfg = resolve_config(args)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return EXIT_OK


def local_ray_reason(cfg, stages: Sequence[str]) -> str | None:
    """What in ``stages`` of ``cfg`` starts a local Ray (``None``: nothing, or a cluster is
    joined by ``RAY_ADDRESS``): an RLlib teacher or data-parallel training."""
    if os.environ.get("RAY_ADDRESS"):
        return None
    t = cfg.teach
    if "teach" in stages and t.algo in ("ppo", "sac") and t.backend == "rllib":
        return "teach (teach.backend: rllib)"
    if "teach" in stages and t.algo in ("rl100", "compass") and t.training.workers > 1:
        return f"teach (teach.training.workers: {t.training.workers})"
    if "distill" in stages and cfg.distill.training.workers > 1:
        return f"distill (distill.training.workers: {cfg.distill.training.workers})"
    return None


def isolate_local_ray(args: argparse.Namespace, cfg, stages: Sequence[str]) -> None:
    """Re-run a command line that starts a local Ray in a private network namespace, so
    that Ray's servers are reachable from this machine only (:mod:`robodistill.core.netns`).
    Only the real command line re-executes; ``main(argv)`` called from Python never does."""
    reason = local_ray_reason(cfg, stages)
    if reason and args.reexec:
        from robodistill.core.netns import reexec_isolated

        reexec_isolated(args.argv, reason)


def cmd_stage(args: argparse.Namespace) -> int:
    from robodistill.stages import STAGES, run_not_built

    cfg = resolve_config(args)
    if getattr(args, "ray_address", None):
        os.environ["RAY_ADDRESS"] = args.ray_address  # read by init_ray (RLlib, Ray workers)
    isolate_local_ray(args, cfg, [args.command])
    if args.command not in STAGES:
        run_not_built(cfg, args.command)
    metrics = STAGES[args.command](cfg, overwrite=args.overwrite)
    print(json.dumps(metrics, indent=2))
    return EXIT_OK


def cmd_pipeline(args: argparse.Namespace) -> int:
    from robodistill.pipeline import run_pipeline

    cfg = resolve_config(args)
    isolate_local_ray(args, cfg, cfg.pipeline.stages)
    results = run_pipeline(cfg, overwrite=args.overwrite)
    width = max(len(s) for s in results)
    for stage, result in results.items():
        m = result.get("metrics") or {}
        detail = (f"return {m['return_mean']:.3g}, success {m.get('success_rate')}"
                  if m.get("return_mean") is not None else result.get("note", ""))  # fmt: skip
        print(f"{stage:<{width}}  {result['status']:<9}  {detail}")
    print(f"report: {cfg.runs_dir}/{cfg.name}/report.md")
    missed = [s for s, r in results.items() if r["status"] != "done"]
    if missed:
        # As `robodistill <stage>` does: a script must not read a partial run as a success.
        print(f"robodistill pipeline: stages that did not run: {', '.join(missed)}",
              file=sys.stderr)  # fmt: skip
        return EXIT_NOT_BUILT
    return EXIT_OK


def cmd_store(args: argparse.Namespace) -> int:
    if args.store_command in ("export", "import"):
        from robodistill.data.formats import run_command

        return run_command(args)
    from robodistill.data.store_verify import verify_store

    report = verify_store(args.path)
    print(report.text())
    return EXIT_OK if report.ok else EXIT_DAMAGED


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)  # fmt: skip
    if not verbose:
        # Third-party libraries are chatty at INFO.
        for name in ("jax", "absl", "matplotlib", "h5py", "numcodecs", "zarr", "asyncio"):
            logging.getLogger(name).setLevel(logging.WARNING)


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can fix, which the CLI prints as one clear message (no traceback)."""
    # Here, not at the top: these pull torch, zarr and onnx, and `--help` should start fast.
    from robodistill.config import ConfigError
    from robodistill.core.rollout import RolloutError
    from robodistill.core.rundir import StageConfigMismatch
    from robodistill.data.store import StoreError
    from robodistill.deploy.export import ExportError
    from robodistill.deploy.metadata import MetadataError
    from robodistill.envs import EnvIdError, UnknownExpertError
    from robodistill.policies.checkpoint import CheckpointError

    return (ConfigError, EnvIdError, UnknownExpertError, CheckpointError, RolloutError,
            StageConfigMismatch, StoreError, ExportError, MetadataError)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.reexec, args.argv = argv is None, list(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose, args.quiet)
    if os.environ.get("ROBODISTILL_NETNS") == "1":
        from robodistill.core.netns import bring_loopback_up

        bring_loopback_up()  # re-executed in a private network namespace (isolate_local_ray)
    from robodistill.errors import StageNotBuilt

    handlers = {"envs": cmd_envs, "config": cmd_config, "pipeline": cmd_pipeline,
                "store": cmd_store}  # fmt: skip
    try:
        return handlers.get(args.command, cmd_stage)(args)
    except StageNotBuilt as e:
        print(f"robodistill {args.command}: {e}", file=sys.stderr)
        return EXIT_NOT_BUILT
    except user_errors() as e:
        print(f"robodistill {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"robodistill {args.command}: interrupted; re-run the same command to resume",
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
