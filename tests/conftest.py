from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


class Recorder:
    """The part of StageRun the sub-stages use: ``dir`` and ``log_metrics``."""

    def __init__(self, directory):
        self.dir, self.rows = directory, []
        directory.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, step, metrics):
        self.rows.append({"step": int(step), **metrics})


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (modules opt in with ``pytestmark``): tiny networks gain
    nothing from a second thread, and on a shared 2-core machine two contending OpenMP
    threads were measured 10-40x slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_RL100 = [
    "teach.diffusion.down_dims=[16, 32]",
    "teach.diffusion.n_groups=4",
    "teach.diffusion.step_embed_dim=16",
    "teach.diffusion.pred_horizon=4",
    "teach.diffusion.action_horizon=2",
    "teach.diffusion.num_inference_steps=2",
    "teach.rl100.il_steps=4",
    "teach.rl100.batch_size=8",
    "teach.rl100.warmup_steps=1",
    "teach.rl100.eval_every=2",
    "teach.rl100.checkpoint_every=2",
    "teach.rl100.log_every=2",
    "teach.eval_episodes=2",
    "teach.rl100.rl_eval_episodes=3",
    # The default students of that teacher, a few steps each.
    "distill.consistency.steps=2",
    "distill.consistency.batch_size=8",
    "distill.consistency.warmup_steps=1",
    "distill.consistency.ode_steps=10",
    "distill.consistency.eval_every=2",
    "distill.consistency.checkpoint_every=2",
    "distill.consistency.log_every=1",
    "distill.consistency.eval_episodes=1",
    "distill.streaming.buffer_horizon=4",
    "distill.streaming.steps=2",
    "distill.streaming.batch_size=8",
    "distill.streaming.warmup_steps=1",
    "distill.streaming.eval_every=2",
    "distill.streaming.checkpoint_every=2",
    "distill.streaming.log_every=1",
    "distill.streaming.eval_episodes=1",
    "distill.rti.eval_episodes=1",
    "eval.latency_decisions=3",
]


@pytest.fixture
def tiny_rl100():
    """A ~10k-parameter diffusion teacher trained for 4 steps (the default teach stage) and
    its students trained for 2 steps each."""
    return list(TINY_RL100)


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides that make any stage finish in well under a second."""
    return [
        *TINY_RL100,
        f"runs_dir={tmp_path / 'runs'}",
        "env.id=Pendulum-v1",
        "env.num_envs=2",
        "env.max_episode_steps=12",
        "collect.policy=random",
        "collect.episodes=5",
        "collect.flush_every=2",
        "eval.policy=random",
        "eval.episodes=3",
        "eval.video_episodes=0",
        "export.exporter=torchscript",
        "export.parity_random=8",
        "export.parity_real_steps=8",
        "export.latency_calls=10",
        "control.episodes=1",
        "control.max_ticks=20",
    ]


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray as :func:`robodistill.core.parallel.init_ray` starts one (at least 2 CPUs,
    no dashboard, workers not niced) with the RLlib teacher's env registered, for one test
    module (the RLlib teacher tests)."""
    ray = pytest.importorskip("ray")
    from ray.tune import register_env

    from robodistill.core.parallel import init_ray
    from robodistill.teach.rl.rllib import ENV_NAME, create_env

    init_ray()
    register_env(ENV_NAME, create_env)
    yield
    ray.shutdown()
