"""Deploy latency: torch eager vs onnxruntime at batch 1 on one thread, and the fixed-rate
controller, for every policy kind that exports.

* **MLP kinds** (SB3 PPO, SB3 SAC, RLlib PPO and the DAgger student ``mlp_student``, Tanh
  MLP (256, 256) with a Gaussian head and the clip squash, distilled from the SB3 PPO teacher;
  PushT ``state`` observations, D = 5; and the COMPASS ``generalist``, Tanh MLP (256, 256)
  with a learned 16-wide embodiment embedding over an 8-slot table of the ``holonomic``,
  ``diffdrive``, ``ackermann`` and ``heavy`` embodiments, acting as ``diffdrive`` on
  ``robodistill/Nav-v0``, D = 27, plus its one-hot embodiment code, a second graph input): at
  the level a controller calls them (``Policy.act`` on a numpy observation vs
  ``OnnxPolicy.act``) and at the graph level (the exported ``nn.Module`` under
  ``torch.inference_mode`` vs ``InferenceSession.run``).
* **diffusion teacher and students** (DDIM-10 teacher, its RTI warm start, consistency
  1-step and 3-step, streaming; PushT ``keypoints`` observations, D = 20; see
  ``benchmarks/deploy_students.py``): per *decision* (torch ``plan(hist)`` via
  ``robodistill.core.latency.decision_latency`` / streaming ``act``; onnxruntime
  ``OnnxPolicy.predict(hist)`` with the whole denoising loop, or the planning ``act`` call
  for RTI and ``act`` for streaming, whose state lives in ``act``) and per control step
  (``act`` averaged over the Ta = 8 steps of a chunk, what a controller sees). Also int8
  dynamic quantization of the consistency student: latency change and output difference.
  Goal (both groups): onnxruntime >= 2x faster than torch eager (ratio = torch / onnx).
* **controller**: the MLP (SB3 PPO) at ``--hz`` (500) and the 1-step consistency student at
  ``--student-hz`` (50), each for ``--ticks`` (10,000) ticks against a trivial robot (fixed
  observation, no-op apply: the loop and the policy only) and against SimRobot on
  ``robodistill/PushT-v0`` (a MuJoCo step per tick), at normal priority and, with
  ``--realtime PRIO``, under SCHED_FIFO: deadline-miss rate and p99 tick latency.
  Goal: < 0.1 % missed deadlines.

Weights are untrained (latency does not depend on training); normalization statistics come
from random PushT steps (the DAgger student's action statistics: the SB3 PPO teacher's labels
of those states, as in DAgger's round 0) and from random Nav-v0 steps of each embodiment (the
generalist's). torch and onnxruntime are timed in alternation (in turns of 10 samples,
``--block``) after a warm-up, so that the load of a shared machine hits both alike; medians
are reported. Load averages are printed at start and end.

    python benchmarks/deploy.py --exporter torchscript --realtime 50   # all (~20 min: 8 runs
                                                                       # of 10k ticks, 4 at 50 Hz)
    python benchmarks/deploy.py --only students --ticks 2000 --skip-sim   # ~5 min
    python benchmarks/deploy.py --only mlp --ticks 2000 --exporter torchscript   # < 1 min

Runtime: MLP timing (six kinds) 10-60 s, student timing and export ~3-5 min with
``--decisions 100`` (the DDIM-10 teacher dominates), controller runs ``ticks / hz`` each
(200 s at 50 Hz).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_students as students  # noqa: E402
from deploy_students import clocked, interleaved  # noqa: E402

from robodistill.deploy.controller import Controller  # noqa: E402
from robodistill.deploy.export import export_policy  # noqa: E402
from robodistill.deploy.robot import SimRobot  # noqa: E402
from robodistill.deploy.runtime import OnnxPolicy, session_options  # noqa: E402
from robodistill.envs import make_env  # noqa: E402

ENV = "robodistill/PushT-v0"
NAV = "robodistill/Nav-v0"
EMBODIMENTS = ("holonomic", "diffdrive", "ackermann", "heavy")
BODY = "diffdrive"  # the embodiment the generalist acts as while timed


def policies() -> dict:
    """SB3 PPO (64, 64, tanh), SB3 SAC (256, 256, relu), RLlib PPO (256, 256, tanh) and the
    DAgger student of the SB3 PPO teacher (``DAggerConfig`` defaults: (256, 256), Tanh)."""
    import gymnasium as gym
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from robodistill.config import DAggerConfig
    from robodistill.distill.dagger import label, resolve_loss
    from robodistill.policies.mlp_student import MLPStudent, array_stats
    from robodistill.policies.rllib_policy import RLlibPolicy, build_layers
    from robodistill.policies.sb3_policy import SB3Policy

    venv = VecNormalize(DummyVecEnv([lambda: make_env(ENV)]))
    venv.reset()
    states = [venv.get_original_obs()]  # raw: the DAgger student normalizes inside
    for _ in range(200):  # observation statistics from random steps
        venv.step(np.array([venv.action_space.sample()]))
        states.append(venv.get_original_obs())
    out = {}
    for name, cls in (("sb3-ppo", PPO), ("sb3-sac", SAC)):
        model = cls("MlpPolicy", venv, seed=0, device="cpu")
        out[name] = SB3Policy.from_model(model, venv)
    env = make_env(ENV)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    spec = [{"type": "Linear", "in": obs_dim, "out": 256}, {"type": "Tanh"},
            {"type": "Linear", "in": 256, "out": 256}, {"type": "Tanh"},
            {"type": "Linear", "in": 256, "out": 2 * act_dim}]  # fmt: skip
    mean = torch.as_tensor(venv.obs_rms.mean, dtype=torch.float64)
    std = torch.as_tensor(np.sqrt(venv.obs_rms.var), dtype=torch.float32)
    assert isinstance(env.observation_space, gym.spaces.Box)
    out["rllib-ppo"] = RLlibPolicy(build_layers(spec), spec, env.observation_space,
                                   env.action_space, mean, std, 10.0, 20.0)  # fmt: skip
    # The DAgger student as robodistill.distill.dagger builds it after round 0: normalizers from the
    # teacher's states and its labels of them (PPO teacher: KL loss, Gaussian head, clip).
    dagger, teacher = DAggerConfig(), out["sb3-ppo"]
    loss, squash = resolve_loss(dagger, teacher)
    obs = np.concatenate(states).astype(np.float32)
    labels = label(teacher, obs, loss)
    out["mlp-student"] = MLPStudent.build(
        env.observation_space, env.action_space, array_stats(obs),
        array_stats(labels["target_mean"]), hidden=dagger.hidden, activation=dagger.activation,
        head="gaussian" if loss == "kl" else "deterministic", squash=squash,
        log_std_stats=array_stats(labels["target_log_std"]) if loss == "kl" else None,
        obs_clip=dagger.obs_clip, seed=0,
    )  # fmt: skip
    return out


def generalist() -> tuple:
    """The COMPASS generalist (``GeneralistConfig`` defaults but a learned embedding: (256,
    256), Tanh, embed_dim 16, 8 slots) over :data:`EMBODIMENTS` on Nav-v0, acting as
    :data:`BODY`; returns ``(policy, obs (1, D_max))``. Normalizers: random steps of each body
    (observations), random actions and zero log-stds (an untrained specialist's labels)."""
    from robodistill.config import GeneralistConfig
    from robodistill.envs.embodiments import EMBODIMENTS as SPECS
    from robodistill.policies.generalist import EmbodimentTable, Generalist, pad
    from robodistill.policies.mlp_student import array_stats

    g = GeneralistConfig()
    table = EmbodimentTable.from_specs([SPECS[n] for n in EMBODIMENTS], n_slots=g.max_embodiments)
    rng, rows, acts = np.random.default_rng(0), [], []
    for name in EMBODIMENTS:
        env = make_env(NAV, embodiment=name)
        rows.append(env.reset(seed=0)[0])
        for _ in range(50):
            acts.append(rng.uniform(-1, 1, env.action_space.shape))
            obs, _, terminated, truncated, _ = env.step(acts[-1].astype(np.float32))
            rows.append(env.reset()[0] if terminated or truncated else obs)
        env.close()
    acts = np.asarray(acts)
    stats = {"obs": array_stats(pad(np.asarray(rows), table.obs_dim)),
             "action": array_stats(acts), "log_std": array_stats(np.zeros_like(acts))}  # fmt: skip
    env = make_env(NAV, embodiment=BODY)
    policy = Generalist.build(table, env.action_space, stats, g.hidden, g.activation, "learned",
                              g.embed_dim, g.obs_clip, seed=0, default=BODY)  # fmt: skip
    obs = pad(env.reset(seed=0)[0][None], table.obs_dim)
    return policy.for_embodiment(BODY), obs


def inference(
    policy, path: Path, obs: np.ndarray, calls: int, embodiment: str | None = None
) -> dict:
    """``embodiment``: a generalist's, whose one-hot code is the graph's second input."""
    import onnxruntime as ort

    module = policy.onnx_spec()["module"].eval()
    feeds = {"obs": obs}
    if embodiment is not None:
        feeds["embodiment"] = policy.codes([embodiment]).numpy()
    xs = [torch.from_numpy(v) for v in feeds.values()]
    session = ort.InferenceSession(
        str(path), session_options(1), providers=["CPUExecutionProvider"]
    )
    runtime = OnnxPolicy(path, threads=1, embodiment=embodiment)

    def torch_graph():
        with torch.inference_mode():
            module(*xs)

    samplers = {
        "torch_act": clocked(lambda: policy.act(obs)),
        "onnx_act": clocked(lambda: runtime.act(obs)),
        "torch_graph": clocked(torch_graph),
        "onnx_graph": clocked(lambda: session.run(None, feeds)),
    }
    rows = interleaved(samplers, calls, warmup=200, block=10)
    rows["ratio_act"] = round(rows["torch_act"]["median"] / rows["onnx_act"]["median"], 2)
    rows["ratio_graph"] = round(rows["torch_graph"]["median"] / rows["onnx_graph"]["median"], 2)
    return rows


class NullRobot:
    """A fixed observation and a no-op apply: what is measured is the loop and the policy."""

    def __init__(self, obs: np.ndarray, act_dim: int):
        self.obs, self.safe = obs.reshape(-1), np.zeros(act_dim, np.float32)

    def observe(self) -> np.ndarray:
        return self.obs

    def apply(self, action: np.ndarray) -> None:
        pass

    def safe_action(self) -> np.ndarray:
        return self.safe


def control(path: Path, robot, hz: float, ticks: int, spin_ms: float, rt: int | None) -> dict:
    policy = OnnxPolicy(path, threads=1)
    controller = Controller(policy, robot, hz, spin_s=spin_ms / 1e3, realtime_priority=rt)
    result = controller.run(ticks=ticks)
    keys = ("ticks", "reason", "deadline_misses", "miss_rate", "skipped_slots", "latency_ms",
            "inference_ms", "jitter_ms", "faults", "duration_s", "realtime")  # fmt: skip
    out = {k: v for k, v in result.to_dict().items() if k in keys}
    out["miss_rate_percent"] = round(100 * result.miss_rate, 4)
    return out


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"


def mlp_kinds(args, workdir: Path, results: dict) -> Path:
    """Time the MLP kinds; return the SB3 PPO file (the 500 Hz controller's policy)."""
    obs = make_env(ENV).reset(seed=0)[0].astype(np.float32)[None]
    general, nav_obs = generalist()
    print(f"MLP kinds on {ENV} (state observations, D = {obs.shape[1]}); generalist on {NAV} "
          f"as {BODY} (D = {nav_obs.shape[1]}, embodiment code {general.table.n_slots}); "
          f"{args.calls} calls")  # fmt: skip
    kinds = [(name, policy, obs, None) for name, policy in policies().items()]
    kinds.append(("generalist", general, nav_obs, BODY))
    paths = {}
    for name, policy, x, embodiment in kinds:
        paths[name] = workdir / f"{name}.onnx"
        export_policy(policy, paths[name], exporter=args.exporter)
        row = inference(policy, paths[name], x, args.calls, embodiment)
        results["inference"][name] = row
        print(f"{name:19s} act       torch {row['torch_act']['median']:8.4f} ms  onnx "
              f"{row['onnx_act']['median']:8.4f} ms  ratio {row['ratio_act']:5.2f}x\n"
              f"{'':19s} graph     torch {row['torch_graph']['median']:8.4f} ms  onnx "
              f"{row['onnx_graph']['median']:8.4f} ms  ratio "
              f"{row['ratio_graph']:5.2f}x")  # fmt: skip
    return paths["sb3-ppo"]


def controller_runs(args, label: str, path: Path, obs: np.ndarray, hz: float,
                    env_kwargs: dict, results: dict) -> None:  # fmt: skip
    """``path`` at ``hz`` against the null robot and SimRobot, normal priority and FIFO."""
    robots = {"null robot": lambda: NullRobot(obs, 2)}
    if not args.skip_sim:
        name = f"SimRobot {ENV}" + (f" {env_kwargs}" if env_kwargs else "")
        robots[name] = lambda: SimRobot(ENV, seed=0, env_kwargs=env_kwargs)
    priorities = [None] + ([args.realtime] if args.realtime else [])
    for (robot_name, robot), rt in itertools.product(robots.items(), priorities):
        row = control(path, robot(), hz, args.ticks, args.spin_ms, rt)
        where = f"{robot_name}, {'SCHED_FIFO ' + str(rt) if row['realtime'] else 'normal priority'}"
        results["controller"][f"{label} @ {hz:g} Hz, {where}"] = row
        print(f"controller {label} @ {hz:g} Hz, {where}: {row['ticks']} ticks, missed "
              f"{row['deadline_misses']} ({row['miss_rate_percent']} %), tick latency "
              f"median {row['latency_ms']['median']} ms p99 {row['latency_ms']['p99']} ms "
              f"max {row['latency_ms']['max']} ms, jitter p99 {row['jitter_ms']['p99']} ms, "
              f"faults {sum(row['faults'].values())}; {load()}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per MLP measurement")
    parser.add_argument("--decisions", type=int, default=100,
                        help="timed samples per student level and side")  # fmt: skip
    parser.add_argument("--block", type=int, default=students.BLOCK,
                        help="student samples per side and turn (1: every sample)")  # fmt: skip
    parser.add_argument("--ticks", type=int, default=10_000, help="controller ticks per run")
    parser.add_argument("--hz", type=float, default=500.0, help="MLP controller rate")
    parser.add_argument("--student-hz", type=float, default=50.0,
                        help="consistency-student controller rate")  # fmt: skip
    parser.add_argument("--spin-ms", type=float, default=0.0, help="controller spin margin")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    parser.add_argument(
        "--realtime",
        type=int,
        default=None,
        metavar="PRIO",
        help="also run the controller under SCHED_FIFO at this priority",
    )
    parser.add_argument("--skip-sim", action="store_true", help="no SimRobot controller run")
    parser.add_argument("--skip-control", action="store_true", help="no controller runs at all")
    parser.add_argument("--only", choices=["all", "mlp", "students"], default="all",
                        help="which kinds to time and run the controller with")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    print(f"machine: {os.cpu_count()} CPUs, {load()}; torch {torch.__version__}, exporter "
          f"{args.exporter}; batch 1, 1 thread (torch and onnxruntime)", flush=True)  # fmt: skip
    results: dict = {"inference": {}, "students": {}, "controller": {}}
    with tempfile.TemporaryDirectory() as tmp:
        mlp = student = None
        if args.only in ("all", "mlp"):
            mlp = mlp_kinds(args, Path(tmp), results)
        if args.only in ("all", "students"):
            print(f"diffusion teacher and students, {args.decisions} samples per level and side, "
                  f"in turns of {args.block}")  # fmt: skip
            results["students"], paths, student_obs = students.run(
                Path(tmp), args.exporter, args.decisions, lambda s: print(s, flush=True), args.block
            )
            student = paths["consistency 1-step"]
        print(f"timing done after {time.perf_counter() - started:.0f} s; {load()}", flush=True)
        if not args.skip_control:
            if mlp is not None:
                state_obs = make_env(ENV).reset(seed=0)[0].astype(np.float32)[None]
                controller_runs(args, "sb3-ppo", mlp, state_obs, args.hz, {}, results)
            if student is not None:
                controller_runs(args, "consistency 1-step", student, student_obs,
                                args.student_hz, students.ENV_KWARGS, results)  # fmt: skip
    print(f"total {time.perf_counter() - started:.0f} s; {load()}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
