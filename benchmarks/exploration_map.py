"""Where the bonus points: the position bonus over the arena, and where the policy drives.

For runs of ``benchmarks/exploration.py`` whose bonus sees the privileged ``position``
(``teach.exploration.bonus_input: [position]``), draws one panel per run: the trained
bonus (from the run's last checkpoint) on a 0.25 m grid over the arena, log colour scale,
the arena's obstacles, start and goal, and the final policy's path on the fixed layout.
Runs without a bonus get the path alone. A bonus that is low where the robot has been and
rises towards the unexplored part is a bonus that points somewhere; a path that stays in
the low part is a policy that did not follow it.

    python benchmarks/exploration_map.py runs/benchmarks/exploration-1row/runs/ppo-rnd-s0 \\
        runs/benchmarks/exploration-1row/runs/ppo-rnd-s1 --out docs/exploration_bonus_map.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from robodistill.config import RunConfig
from robodistill.envs import make_env
from robodistill.policies.base import load_policy
from robodistill.policies.exploration import bonus_from_config

PREFIX = "exploration.bonus."


def load_bonus(stage_dir: Path, cfg: RunConfig, env) -> torch.nn.Module:
    """The run's bonus module with its last checkpoint's weights and statistics."""
    layout = {e["key"]: e for e in env.unwrapped.observation_layout}
    cols = np.arange(layout["position"]["start"], layout["position"]["stop"])
    space = env.observation_space
    bounds = (space.low[cols], space.high[cols])
    bonus = bonus_from_config(cfg.teach.exploration, len(cols), cfg.seed, input_bounds=bounds)
    tensors = load_file(stage_dir / "checkpoint" / "tensors.safetensors")
    bonus.load_state_dict({k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)})
    return bonus


def policy_path(stage_dir: Path, env, cols: np.ndarray) -> np.ndarray:
    """``(T, 2)`` positions of the final policy's episode on the fixed layout."""
    policy = load_policy(stage_dir / "policy")
    obs, _ = env.reset(seed=0)
    policy.reset()
    path, done = [obs[cols]], False
    while not done:
        obs, _, terminated, truncated, _ = env.step(policy.act(obs[None])[0])
        path.append(obs[cols])
        done = terminated or truncated
    return np.array(path)


def draw(run_dirs: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Circle, Rectangle

    fig, axes = plt.subplots(1, len(run_dirs), figsize=(4.2 * len(run_dirs), 5), squeeze=False)
    for ax, run_dir in zip(axes[0], run_dirs, strict=True):
        stage_dir = run_dir / "teach"
        manifest = json.loads((stage_dir / "manifest.json").read_text())
        cfg = RunConfig.model_validate(manifest["config"])
        env = make_env(cfg.env.id, **cfg.env.kwargs)
        env.reset(seed=0)
        layout = env.unwrapped.layout
        cols_entry = {e["key"]: e for e in env.unwrapped.observation_layout}["position"]
        cols = np.arange(cols_entry["start"], cols_entry["stop"])
        image = None
        if cfg.teach.exploration.method != "none":  # plain PPO: the path alone
            bonus = load_bonus(stage_dir, cfg, env)
            xs = np.arange(0.125, layout.width, 0.25)
            ys = np.arange(0.125, layout.height, 0.25)
            grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
            values = bonus.bonus(grid).numpy().reshape(len(ys), len(xs))
            image = ax.imshow(
                values, origin="lower", extent=(0, layout.width, 0, layout.height),
                norm=LogNorm(vmin=max(values.min(), 1e-9), vmax=values.max()), cmap="viridis",
            )  # fmt: skip
        ax.set_xlim(0, layout.width)
        ax.set_ylim(0, layout.height)
        for cx, cy, hx, hy, _yaw in layout.boxes:
            ax.add_patch(Rectangle((cx - hx, cy - hy), 2 * hx, 2 * hy, color="white", alpha=0.9))
        for cx, cy, r in layout.cylinders:
            ax.add_patch(Circle((cx, cy), r, color="white", alpha=0.9))
        path = policy_path(stage_dir, env, cols)
        ax.plot(path[:, 0], path[:, 1], color="red", lw=1.2, label="final policy")
        ax.plot(*layout.start[:2], "o", color="red", label="start")
        ax.add_patch(Circle(tuple(layout.goal), 0.3, fill=False, color="orange", lw=2))
        ax.plot([], [], "o", mfc="none", color="orange", label="goal")
        result = json.loads((stage_dir / "best.json").read_text()) if (
            stage_dir / "best.json").exists() else {}  # fmt: skip
        success = result.get("success_rate", result.get("final_success_rate"))
        ax.set_title(f"{run_dir.name}" + (f" (eval success {success:.1f})" if success is not None
                                          else ""), fontsize=9)  # fmt: skip
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        if image is not None:
            fig.colorbar(image, ax=ax, fraction=0.046, label="bonus (raw)")
        ax.legend(fontsize=6, loc="upper left")
        env.close()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"map: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (holding teach/)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/exploration_map.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    draw(args.runs, args.out)


if __name__ == "__main__":
    main()
