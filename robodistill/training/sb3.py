"""stable-baselines3 helpers every SB3 trainer shares: callbacks (validation through the one
best-policy keeper, training success counts, the per-episode record, checkpoints, progress) and resumable
checkpoints of SB3 models in safetensors + JSON.

The exploration wrapper (``explore_venv`` below) is duck-typed: anything with
``state_tensors()`` and ``load_state_tensors(tensors)``, e.g.
:class:`robodistill.teach.rl.exploration_sb3.IntrinsicRewardVecEnv`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from robodistill.config import RunConfig
from robodistill.core.rundir import (
    StageRun,
    committed_dir,
    progress,
    replace_dir,
    staging_dir,
    write_json_atomic,
)
from robodistill.data.store import StoreError
from robodistill.policies.sb3_policy import SB3Policy
from robodistill.training.checkpoint import load_optimizer_state, optimizer_state
from robodistill.training.episodes import EPISODES_NAME, EpisodeLog
from robodistill.training.selection import BestPolicyKeeper

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
STATE_NAME, TENSORS_NAME = "state.json", "tensors.safetensors"
LEGACY_OPTIMIZERS_NAME = "optimizers.pt"
"""Where checkpoints before the one checkpoint format kept the optimizers (a pickle)."""


# -- callbacks -------------------------------------------------------------------------------
# Evaluation and checkpoints run at the start of a rollout: SB3 has just applied the previous
# rollout's update (PPO: after train(); SAC: after each step's gradient steps), so the policy,
# the optimizers and num_timesteps describe the same moment.


class EveryNSteps(BaseCallback):
    """Calls :meth:`due` at the start of the first rollout after each multiple of ``every``
    env steps (after a resume: the next multiple after the steps already done)."""

    def __init__(self, every: int):
        super().__init__()
        self.every = every
        self.next_at = every

    def due(self) -> None:
        raise NotImplementedError

    def _on_training_start(self) -> None:
        self.next_at = (self.num_timesteps // self.every + 1) * self.every

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next_at:
            self.due()
            self.next_at = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        return True


class EvalCallback(EveryNSteps):
    """Every ``teach.eval_every`` steps: roll the deterministic policy out on the fixed
    validation seeds, log, and save it to ``stage.dir/policy`` when it is the best so far
    (:class:`robodistill.training.selection.BestPolicyKeeper`). ``to_policy(model,
    vec_normalize)`` makes that policy (default an ``SB3Policy``; a privileged teacher's
    ``PrivilegedTeacher.from_model``)."""

    def __init__(self, cfg: RunConfig, stage: StageRun, vec_normalize: VecNormalize | None,
                 to_policy=SB3Policy.from_model):  # fmt: skip
        super().__init__(cfg.teach.eval_every)
        self.stage, self.vec_normalize = stage, vec_normalize
        self.to_policy = to_policy  # (model, vec_normalize) -> the Policy evaluated and kept
        self.keeper = BestPolicyKeeper(cfg, stage.dir)
        self.last: dict[str, Any] | None = None
        self.last_step = -1

    def state(self) -> dict[str, Any]:
        out = {"last_eval_step": self.last_step, "best": self.keeper.best}
        if getattr(self, "train_success", None) is not None:
            out["first_success_step"] = self.train_success.first_success_step
        return out

    def due(self) -> None:
        self.evaluate()

    def evaluate(self) -> dict[str, Any]:
        step = int(self.model.num_timesteps)
        policy = self.to_policy(self.model, self.vec_normalize)
        result, row = self.keeper.evaluate(policy, step)
        infos = list(self.model.ep_info_buffer or [])
        if infos:  # training episodes (Monitor's raw returns, before any reward scaling)
            row["train_return_mean"] = float(np.mean([i["r"] for i in infos]))
        self.stage.log_metrics(step, row)
        if getattr(self.model, "_logger", None) is not None:  # None when learn() never ran
            for key, value in row.items():
                if value is not None:
                    self.logger.record(key.replace("eval_", "eval/", 1), value)
        log.info("teach: eval at %d steps: %s", step, json.dumps(row))
        self.last, self.last_step = result, step
        return result


class TrainSuccessCallback(BaseCallback):
    """Counts finished training episodes (Monitor's ``info["episode"]``) and those that
    reached the goal (``info["is_success"]``, which ``make_env`` also sets from
    ``info["success"]`` or ``env.success_key``); at the end of each rollout logs a row
    ``{"train_success": ..., "train_episodes": ...}`` (counts since the previous row) to
    ``stage.log_metrics``. ``first_success_step`` is the first env step (``num_timesteps``
    after that vector step) at which a training episode succeeded, ``None`` if none has;
    it survives resumes through the checkpoint's state. The totals count this run only."""

    def __init__(self, stage: StageRun, first_success_step: int | None = None):
        super().__init__()
        self.stage = stage
        self.first_success_step = first_success_step
        self.episodes = self.successes = 0
        self.total_episodes = self.total_successes = 0

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            if "episode" not in info:
                continue
            self.episodes += 1
            if info.get("is_success"):
                self.successes += 1
                if self.first_success_step is None:
                    self.first_success_step = int(self.num_timesteps)
        return True

    def _on_rollout_end(self) -> None:
        self.flush()

    def flush(self) -> None:
        if self.episodes == 0 and self.successes == 0:
            return
        self.stage.log_metrics(
            int(self.num_timesteps),
            {"train_success": self.successes, "train_episodes": self.episodes},
        )
        self.total_episodes += self.episodes
        self.total_successes += self.successes
        self.episodes = self.successes = 0


class EpisodeRecordCallback(BaseCallback):
    """The per-episode training record (:mod:`robodistill.training.episodes`): a row per
    finished training episode (Monitor's raw ``info["episode"]`` return and length, the
    ``info["is_success"]`` of its last step, ``num_timesteps`` after that vector step) in
    ``directory/episodes.jsonl`` (a stage's or a COMPASS specialist's folder), flushed at the
    end of each rollout. ``resume_step``: the checkpoint's ``num_timesteps`` when resuming
    (later rows are dropped), else ``None``."""

    def __init__(self, directory: Path, resume_step: int | None = None):
        super().__init__()
        self.log = EpisodeLog(Path(directory) / EPISODES_NAME, resume_step)

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            episode = info.get("episode")
            if episode is not None:
                self.log.add(episode["r"], episode["l"], info.get("is_success"),
                             self.num_timesteps)  # fmt: skip
        return True

    def _on_rollout_end(self) -> None:
        self.log.flush()

    def _on_training_end(self) -> None:
        self.log.flush()

    def close(self) -> None:
        self.log.close()


class CheckpointCallback(EveryNSteps):
    """Every ``checkpoint_every`` steps: write a resumable checkpoint (see save_checkpoint)."""

    def __init__(self, directory: Path, every: int, vec_normalize, explore_venv, evaluator):
        super().__init__(every)
        self.directory, self.vec_normalize = directory, vec_normalize
        self.explore_venv, self.evaluator = explore_venv, evaluator

    def due(self) -> None:
        # Looked up at call time so tests can wrap it to simulate a crash after a save.
        save_checkpoint(self.directory, self.model, self.vec_normalize, self.explore_venv,
                        self.evaluator.state())  # fmt: skip


class ProgressCallback(BaseCallback):
    """``robodistill.core.rundir.progress`` bar over environment steps (silent when not a TTY);
    SB3's own ``progress_bar=True`` would need ``rich``."""

    def __init__(self, total: int, desc: str):
        super().__init__()
        self.total, self.desc, self.bar = total, desc, None

    def _on_training_start(self) -> None:
        self.bar = progress(self.total, self.desc, initial=self.num_timesteps, unit="step")

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


# -- checkpoints -----------------------------------------------------------------------------


def _optimizers(model) -> dict[str, torch.optim.Optimizer]:
    if isinstance(model, PPO):
        optims = {"policy": model.policy.optimizer}
        if hasattr(model, "critic_int"):  # TwoStreamPPO's intrinsic value head
            optims["critic_int"] = model.critic_int_optimizer
        return optims
    optims = {"actor": model.actor.optimizer, "critic": model.critic.optimizer}
    if model.ent_coef_optimizer is not None:
        optims["ent_coef"] = model.ent_coef_optimizer
    return optims


def _vecnorm_tensors(vec_normalize: VecNormalize) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("obs_rms", "ret_rms"):
        rms = getattr(vec_normalize, name)
        out[f"vecnormalize.{name}.mean"] = torch.as_tensor(np.asarray(rms.mean, np.float64))
        out[f"vecnormalize.{name}.var"] = torch.as_tensor(np.asarray(rms.var, np.float64))
        out[f"vecnormalize.{name}.count"] = torch.tensor(float(rms.count), dtype=torch.float64)
    return out


def save_checkpoint(
    directory: Path, model, vec_normalize, explore_venv, extra: dict[str, Any]
) -> Path:
    """Write ``state.json`` + ``tensors.safetensors`` to ``directory``.

    Tensors: the SB3 policy's ``state_dict`` (``policy.*``; SAC's critic target included),
    SAC's ``log_ent_coef``, VecNormalize's ``obs_rms``/``ret_rms`` mean/var/count, the
    exploration state (``exploration.*``), each optimizer's tensors (``optimizer.<name>.*``;
    their scalars go to ``state.json``). The replay buffer is not saved (module docstring).
    The new checkpoint is built in a temporary directory and renamed into place; the old
    one is moved aside first and deleted last, so a crash leaves one complete checkpoint.
    """
    tensors = {f"policy.{k}": v.detach().clone() for k, v in model.policy.state_dict().items()}
    if hasattr(model, "critic_int"):  # TwoStreamPPO: the intrinsic value head
        tensors |= {f"critic_int.{k}": v.detach().clone()
                    for k, v in model.critic_int.state_dict().items()}  # fmt: skip
    if isinstance(model, SAC) and model.ent_coef_optimizer is not None:
        tensors["sac.log_ent_coef"] = model.log_ent_coef.detach().clone()
    if vec_normalize is not None:
        tensors |= _vecnorm_tensors(vec_normalize)
    if explore_venv is not None:
        for k, v in explore_venv.state_tensors().items():
            tensors[f"exploration.{k}"] = torch.as_tensor(v).detach().clone()
    optimizers = {}
    for name, optimizer in _optimizers(model).items():
        optim_tensors, optimizers[name] = optimizer_state(optimizer)
        tensors |= {f"optimizer.{name}.{k}": v for k, v in optim_tensors.items()}
    state = {
        "format": CHECKPOINT_FORMAT,
        "optimizers": optimizers,
        "algo": "ppo" if isinstance(model, PPO) else "sac",
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(model._n_updates),
        "episode_num": int(model._episode_num),
        "exploration": explore_venv is not None,
        **({"int_rng": model._int_rng.bit_generator.state} if hasattr(model, "_int_rng") else {}),
        **extra,
    }
    tmp = staging_dir(directory)
    tmp.mkdir(parents=True)
    save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_NAME))
    write_json_atomic(tmp / STATE_NAME, state)
    replace_dir(tmp, directory)
    return directory


def restore_checkpoint(directory: Path, model, vec_normalize, explore_venv) -> dict | None:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` and the wrappers.

    Returns its ``state.json`` contents, or ``None`` when there is no checkpoint.
    """
    directory = committed_dir(directory, STATE_NAME)  # a crash between renames: .old
    if directory is None:
        return None
    state = json.loads((directory / STATE_NAME).read_text())
    if (directory / LEGACY_OPTIMIZERS_NAME).is_file() or "optimizers" not in state:
        raise StoreError(
            f"{directory} keeps its optimizers in {LEGACY_OPTIMIZERS_NAME} (a pickle, written by "
            "an older version); this version reads safetensors + JSON only. Re-run the stage "
            "with --overwrite to start it over"
        )
    algo = "ppo" if isinstance(model, PPO) else "sac"
    if state.get("format") != CHECKPOINT_FORMAT or state.get("algo") != algo:
        raise RuntimeError(
            f"{directory} holds a {state.get('algo')!r} checkpoint of format "
            f"{state.get('format')!r}; this run trains {algo!r} (format {CHECKPOINT_FORMAT})"
        )
    tensors = load_file(str(directory / TENSORS_NAME))
    policy_sd = {k[len("policy.") :]: v for k, v in tensors.items() if k.startswith("policy.")}
    model.policy.load_state_dict(policy_sd, strict=True)
    if hasattr(model, "critic_int"):
        prefix = "critic_int."
        model.critic_int.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
    for name, optimizer in _optimizers(model).items():
        prefix = f"optimizer.{name}."
        load_optimizer_state(
            optimizer, {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)},
            state["optimizers"][name],
        )  # fmt: skip
    if "sac.log_ent_coef" in tensors:
        with torch.no_grad():
            model.log_ent_coef.copy_(tensors["sac.log_ent_coef"])
    if vec_normalize is not None:
        for name in ("obs_rms", "ret_rms"):
            rms = getattr(vec_normalize, name)
            rms.mean = tensors[f"vecnormalize.{name}.mean"].numpy().copy()
            rms.var = tensors[f"vecnormalize.{name}.var"].numpy().copy()
            rms.count = float(tensors[f"vecnormalize.{name}.count"])
    if explore_venv is not None and state.get("exploration"):
        prefix = "exploration."
        explore_venv.load_state_tensors(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
    if hasattr(model, "_int_rng") and "int_rng" in state:
        model._int_rng.bit_generator.state = state["int_rng"]
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state["n_updates"])  # SAC's target-network schedule counts these
    model._episode_num = int(state["episode_num"])
    return state
