"""The pipeline's stages. Each reads the run config, works inside its stage directory and
returns its metrics; each is resumable (see :class:`robodistill.run.StageRun`).

Stages that later issues build raise :class:`StageNotBuilt`, which says so plainly
instead of pretending.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from robodistill.config import RunConfig
from robodistill.run import StageRun, directory_digest, progress

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 900_000
"""Evaluation seeds start here (per run seed), far from collection's, so they never overlap."""
VALIDATION_SEED_OFFSET = 800_000
"""Seeds a training stage picks its best checkpoint on: disjoint from the evaluation seeds,
so the numbers ``robodistill eval`` reports are not the ones the checkpoint was chosen on."""

NOT_BUILT: dict[str, str] = {}
"""Stage name -> why it is not built yet (every stage is built; variants may not be)."""


class StageNotBuilt(NotImplementedError):
    """This stage is not implemented in this version; nothing was run."""


def episode_seeds(cfg: RunConfig, count: int, offset: int = 0) -> list[int]:
    base = cfg.seed * 1_000_000 + offset
    return [base + i for i in range(count)]


def policy_inputs(spec: str) -> dict[str, str]:
    """A saved policy's digest, so that a stage re-run on a retrained policy is not skipped."""
    path = Path(spec)
    return {"policy_digest": directory_digest(path)} if path.is_dir() else {}


def resolve_policy(spec: str, env_id: str, action_space, seed: int):
    """``"random"``, ``"expert"`` or a checkpoint directory -> a :class:`Policy`."""
    from robodistill.envs import make_expert
    from robodistill.policies import RandomPolicy, load_policy

    if spec == "random":
        return RandomPolicy.for_space(action_space, seed=seed)
    if spec == "expert":
        return make_expert(env_id, seed=seed)
    return load_policy(Path(spec))


def run_collect(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Roll out ``collect.policy`` into ``<run>/collect/demos.zarr`` until it holds
    ``collect.episodes`` episodes. Resumes by running only the seeds not yet stored.
    With ``collect.workers > 1`` episodes run in Ray actors; this process stays the store's
    only writer."""
    from robodistill.rollout import Throughput, env_spaces
    from robodistill.store import TrajectoryStore

    inputs = policy_inputs(cfg.collect.policy)
    with StageRun(cfg, "collect", overwrite=overwrite, inputs=inputs) as stage:
        if stage.skipped:
            return stage.manifest["metrics"]
        _, action_space, env_doc = env_spaces(cfg.env.id, cfg.env.kwargs)
        path = stage.dir / "demos.zarr"
        if path.exists():
            store = TrajectoryStore.open(path, mode="a", flush_every=cfg.collect.flush_every)
        else:
            attrs = {**env_doc, "source_policy": cfg.collect.policy}
            store = TrajectoryStore.create(path, attrs=attrs, flush_every=cfg.collect.flush_every)
        with store:
            done_seeds = set(store.episode_meta()["seed"].tolist()) if store.n_episodes else set()
            wanted = episode_seeds(cfg, cfg.collect.episodes)
            todo = [s for s in wanted if s not in done_seeds]
            if done_seeds:
                log.info(
                    "collect: %d episodes already stored, %d to go", len(done_seeds), len(todo)
                )
            policy = resolve_policy(cfg.collect.policy, cfg.env.id, action_space, cfg.seed)
            speed = Throughput()
            bar = progress(len(wanted), f"collect {cfg.env.id}", initial=len(wanted) - len(todo))

            def record(episode):
                store.add_episode(episode)
                speed.add(len(episode.data["reward"]))
                step = store.n_episodes
                stage.log_metrics(step, {"return": float(episode.data["reward"].sum()),
                                         "length": len(episode.data["reward"]),
                                         "success": episode.success})  # fmt: skip
                bar.update(1)
                bar.set_postfix(speed.rates() | {"stored": step}, refresh=False)

            try:
                _run_episodes(cfg, policy, cfg.collect.policy, todo, on_episode=record,
                              workers=cfg.collect.workers, field="collect.workers",
                              policy_seed=cfg.seed, env_kwargs=cfg.env.kwargs)  # fmt: skip
            finally:
                bar.close()
            store.flush()
            store.save_stats()
            meta = store.episode_meta()
            success = [None if v < 0 else bool(v) for v in meta["success"]]
            metrics = summarize_episodes(meta["return"], meta["length"], success) | {
                "store": str(path),
                "steps": int(store.n_steps),
                **{k: round(v, 2) for k, v in speed.rates().items()},
            }
        log.info("collect: %s", json.dumps(metrics))
        stage.finish(metrics)
        return metrics


def run_eval(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate ``eval.policy`` (``auto``: the teacher and its students side by side) on
    ``eval.episodes`` fixed seeds (see :mod:`robodistill.evaluate`)."""
    from robodistill.evaluate import run_eval as evaluate

    return evaluate(cfg, overwrite=overwrite)


def _run_episodes(
    cfg: RunConfig, policy, spec: str, seeds: list[int], *, on_episode, workers: int,
    field: str, policy_seed: int, env_kwargs: dict, on_frames=None,
) -> None:  # fmt: skip
    """One episode per seed into ``on_episode``: here with ``policy`` when ``workers == 1``,
    else in ``workers`` Ray actors that rebuild the policy from ``spec`` (``policy_seed``
    is the seed ``policy`` was resolved with)."""
    from robodistill.rollout import rollout

    kwargs = {"num_envs": cfg.env.num_envs, "max_episode_steps": cfg.env.max_episode_steps,
              "env_kwargs": env_kwargs, "source_policy": spec}  # fmt: skip
    if workers > 1 and seeds:
        from robodistill.parallel import parallel_rollout

        parallel_rollout(cfg.env.id, spec, seeds, workers=workers, policy_seed=policy_seed,
                         on_episode=on_episode, field=field, **kwargs)  # fmt: skip
    else:
        rollout(cfg.env.id, policy, seeds, on_episode=on_episode, on_frames=on_frames, **kwargs)


def summarize_episodes(returns, lengths, successes) -> dict[str, Any]:
    """Mean/std return, mean length, and success rate over the episodes that report one
    (``None`` entries in ``successes`` are envs without a notion of success)."""
    import numpy as np

    returns = np.asarray(returns, dtype=np.float64)
    known = [bool(s) for s in successes if s is not None]
    return {
        "episodes": int(len(returns)),
        "return_mean": float(returns.mean()) if len(returns) else None,
        "return_std": float(returns.std()) if len(returns) else None,
        "length_mean": float(np.mean(lengths)) if len(returns) else None,
        "success_rate": float(np.mean(known)) if known else None,
    }


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # A line cut short by a crash: the episode it described is simply re-run.
            log.warning("ignoring a truncated line in %s", path)
    return rows


def run_teach(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Train the configured teacher into ``<run>/teach/policy`` (resumable)."""
    inputs: dict[str, Any] = {}
    if cfg.teach.algo == "rl100":
        from robodistill.teach_rl100 import demos_inputs
        from robodistill.teach_rl100 import run_teach_rl100 as train

        # Checked before the stage directory exists: no demos -> a clear error, nothing made.
        inputs = demos_inputs(cfg)
    elif cfg.teach.algo == "compass":
        from robodistill.teach_compass import compass_inputs
        from robodistill.teach_compass import run_teach_compass as train

        inputs = compass_inputs(cfg)  # no demos -> a clear error before the stage dir exists
    elif cfg.teach.backend == "rllib":
        from robodistill.teach_rllib import run_teach_rllib as train
    else:
        from robodistill.teach_sb3 import run_teach_sb3 as train

    with StageRun(cfg, "teach", overwrite=overwrite, inputs=inputs) as stage:
        if stage.skipped:
            return stage.manifest["metrics"]
        metrics = train(cfg, stage)
        stage.finish(metrics)
        return metrics


def run_not_built(cfg: RunConfig, stage: str) -> dict[str, Any]:
    raise StageNotBuilt(f"stage '{stage}' is not built yet: {NOT_BUILT[stage]}. Nothing was run.")


def run_distill(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Distill the teacher into the configured students (see :mod:`robodistill.distill`)."""
    from robodistill.distill import run_distill as distill

    return distill(cfg, overwrite=overwrite)


def run_export(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Export the run's policy to ONNX (see :mod:`robodistill.deploy_stages`)."""
    from robodistill.deploy_stages import run_export as export

    return export(cfg, overwrite=overwrite)


def run_control(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the exported policy in the fixed-rate controller (see :mod:`robodistill.deploy_stages`)."""
    from robodistill.deploy_stages import run_control as control

    return control(cfg, overwrite=overwrite)


STAGES = {
    "collect": run_collect,
    "teach": run_teach,
    "distill": run_distill,
    "eval": run_eval,
    "export": run_export,
    "control": run_control,
}
"""Stage name -> function(cfg, overwrite) for the stages this version implements."""
