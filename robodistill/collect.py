"""The ``collect`` stage: roll a policy out into the run's trajectory store.

::

    metrics = run_collect(cfg)    # <run>/collect/demos.zarr, resumable

Episode ``i`` runs on collection seed ``i`` (:mod:`robodistill.core.seeds`); a resumed
stage runs only the seeds the store does not hold yet, so an interrupted collection ends
with the same store as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from robodistill.config import RunConfig
from robodistill.core.parallel import run_episodes
from robodistill.core.policy_specs import policy_inputs, resolve_policy
from robodistill.core.rollout import Throughput, env_spaces
from robodistill.core.rundir import StageRun, progress
from robodistill.core.seeds import episode_seeds
from robodistill.core.summaries import summarize_episodes
from robodistill.data.store import TrajectoryStore

log = logging.getLogger(__name__)


def run_collect(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Roll out ``collect.policy`` into ``<run>/collect/demos.zarr`` until it holds
    ``collect.episodes`` episodes. Resumes by running only the seeds not yet stored.
    With ``collect.workers > 1`` episodes run in Ray actors; this process stays the store's
    only writer."""
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
                run_episodes(cfg, policy, cfg.collect.policy, todo, on_episode=record,
                             workers=cfg.collect.workers, field="collect.workers",
                             policy_seed=cfg.seed, env_kwargs=cfg.env.make_kwargs())  # fmt: skip
            finally:
                bar.close()
            store.flush()
            store.save_stats()
            meta = store.episode_meta()
            success = [None if v < 0 else bool(v) for v in meta["success"]]
            scores = (meta["max_score"], meta["score_source"])
            metrics = summarize_episodes(meta["return"], meta["length"], success, *scores) | {
                "store": str(path),
                "steps": int(store.n_steps),
                **{k: round(v, 2) for k, v in speed.rates().items()},
            }
        log.info("collect: %s", json.dumps(metrics))
        stage.finish(metrics)
        return metrics
