"""Deploy latency: torch eager vs onnxruntime at batch 1, and the fixed-rate controller.

For every policy kind that exports today (SB3 PPO, SB3 SAC, RLlib PPO; the students of
issues #6/#7 join when they exist), on PushT's observation and action sizes:

* **inference**: batch-1 latency on one thread, torch eager against onnxruntime, both
  at the level a controller calls them (``Policy.act`` on a numpy observation vs
  ``OnnxPolicy.act``) and at the graph level (the exported ``nn.Module`` under
  ``torch.inference_mode`` vs ``InferenceSession.run``). Goal: onnxruntime >= 2x faster.
* **controller**: the MLP (SB3 PPO) at 500 Hz for 10,000 ticks against a trivial robot
  (fixed observation, no-op apply: the loop and the policy only) and against SimRobot on
  ``robodistill/PushT-v0`` (a MuJoCo step per tick): deadline-miss rate and p99 tick
  latency. Goal: < 0.1 % missed deadlines.

Weights are untrained (latency does not depend on training); observation statistics come
from random PushT steps. Medians over ``--calls`` timed calls after a warm-up.

    python benchmarks/deploy.py                        # everything (~1.5 min)
    python benchmarks/deploy.py --ticks 2000 --skip-sim --exporter torchscript
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from robodistill.deploy.controller import Controller, summarize_ms
from robodistill.deploy.export import export_policy
from robodistill.deploy.robot import SimRobot
from robodistill.deploy.runtime import OnnxPolicy, session_options
from robodistill.envs import make_env

ENV = "robodistill/PushT-v0"


def policies() -> dict:
    """SB3 PPO (64, 64, tanh), SB3 SAC (256, 256, relu), RLlib PPO (256, 256, tanh)."""
    import gymnasium as gym
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from robodistill.policies.rllib_policy import RLlibPolicy, build_layers
    from robodistill.policies.sb3_policy import SB3Policy

    venv = VecNormalize(DummyVecEnv([lambda: make_env(ENV)]))
    venv.reset()
    for _ in range(200):  # observation statistics from random steps
        venv.step(np.array([venv.action_space.sample()]))
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
    return out


def timed(fn, calls: int, warmup: int = 200) -> dict:
    for _ in range(warmup):
        fn()
    times = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t
    return summarize_ms(times)


def inference(policy, path: Path, obs: np.ndarray, calls: int) -> dict:
    import onnxruntime as ort

    module = policy.onnx_spec()["module"].eval()
    x = torch.from_numpy(obs)
    session = ort.InferenceSession(
        str(path), session_options(1), providers=["CPUExecutionProvider"]
    )
    runtime = OnnxPolicy(path, threads=1)

    def torch_graph():
        with torch.inference_mode():
            module(x)

    rows = {
        "torch_act": timed(lambda: policy.act(obs), calls),
        "onnx_act": timed(lambda: runtime.act(obs), calls),
        "torch_graph": timed(torch_graph, calls),
        "onnx_graph": timed(lambda: session.run(None, {"obs": obs}), calls),
    }
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per measurement")
    parser.add_argument("--ticks", type=int, default=10_000, help="controller ticks per run")
    parser.add_argument("--hz", type=float, default=500.0, help="MLP controller rate")
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
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}; torch "
          f"{torch.__version__}, exporter {args.exporter}")  # fmt: skip
    obs = make_env(ENV).reset(seed=0)[0].astype(np.float32)[None]
    results: dict = {"inference": {}, "controller": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, policy in policies().items():
            paths[name] = Path(tmp) / f"{name}.onnx"
            export_policy(policy, paths[name], exporter=args.exporter)
            row = inference(policy, paths[name], obs, args.calls)
            results["inference"][name] = row
            print(f"{name:10s} act: torch {row['torch_act']['median']:.4f} ms, onnxruntime "
                  f"{row['onnx_act']['median']:.4f} ms, ratio {row['ratio_act']}x | graph: torch "
                  f"{row['torch_graph']['median']:.4f} ms, onnxruntime "
                  f"{row['onnx_graph']['median']:.4f} ms, ratio {row['ratio_graph']}x")  # fmt: skip
        print("consistency / streaming / diffusion students: not built yet (issues #5-#7)")
        mlp = paths["sb3-ppo"]
        robots = {"null robot": NullRobot(obs, 2)}
        if not args.skip_sim:
            robots[f"SimRobot {ENV}"] = SimRobot(ENV, seed=0)
        priorities = [None] + ([args.realtime] if args.realtime else [])
        for (label, robot), rt in itertools.product(robots.items(), priorities):
            row = control(mlp, robot, args.hz, args.ticks, args.spin_ms, rt)
            label = f"{label}, {'SCHED_FIFO ' + str(rt) if row['realtime'] else 'normal priority'}"
            results["controller"][f"sb3-ppo @ {args.hz:g} Hz, {label}"] = row
            print(f"controller sb3-ppo @ {args.hz:g} Hz, {label}: {row['ticks']} ticks, missed "
                  f"{row['deadline_misses']} ({row['miss_rate_percent']} %), tick latency "
                  f"median {row['latency_ms']['median']} ms p99 {row['latency_ms']['p99']} ms "
                  f"max {row['latency_ms']['max']} ms, jitter p99 {row['jitter_ms']['p99']} ms, "
                  f"faults {sum(row['faults'].values())}")  # fmt: skip
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
