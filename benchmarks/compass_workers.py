"""COMPASS stage 2 wall time: specialists one after another vs ``teach.compass.workers``
processes at once, side by side in one run.

Two teach runs of ``configs/teachers/compass_nav.yaml`` under ``--runs-dir``, identical but
for ``teach.compass.workers`` (1, then ``--workers``), each on 50 expert episodes, with a short
base (``--base-steps``) and ``--timesteps`` PPO steps per specialist (timing only; the
trained specialists are bit-identical either way, see ``tests/test_compass.py``). Stage 2's
time is the teach stage's wall time minus its base's. Prints both and their ratio.

    python benchmarks/compass_workers.py                  # 4 bodies x 20k steps, ~10 min
    python benchmarks/compass_workers.py --timesteps 5000 --workers 4
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import markdown  # noqa: E402

TEACH_CONFIG = "configs/teachers/compass_nav.yaml"


def main() -> None:
    from robodistill.collect import run_collect
    from robodistill.config import load_config
    from robodistill.teach.stage import run_teach

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--timesteps", type=int, default=20_000, help="PPO steps per specialist")
    parser.add_argument("--base-steps", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    runs = Path(args.runs_dir)
    common = [f"runs_dir={runs}", f"teach.total_timesteps={args.timesteps}",
              "teach.compass.timesteps={}", f"teach.compass.base_steps={args.base_steps}",
              f"teach.compass.base_eval_every={args.base_steps}", "collect.episodes=50"]  # fmt: skip
    rows = []
    for workers in (1, args.workers):
        name = f"compass-workers-{workers}"
        shutil.rmtree(runs / name, ignore_errors=True)  # a fresh run, not a resumed one
        cfg = load_config(
            TEACH_CONFIG, [*common, f"name={name}", f"teach.compass.workers={workers}"]
        )
        run_collect(cfg)  # 50 expert episodes, a few seconds
        t = time.monotonic()
        metrics = run_teach(cfg)
        wall = time.monotonic() - t
        stage2 = wall - metrics["base"]["wall_s"]
        rows.append({"workers": workers, "specialists": len(metrics["specialists"]),
                     "ppo_steps": sum(s["timesteps"] for s in metrics["specialists"].values()),
                     "stage2_s": stage2})  # fmt: skip
        print(f"workers={workers}: stage 2 {stage2:.0f} s", flush=True)
    ratio = rows[0]["stage2_s"] / rows[1]["stage2_s"]
    print(markdown(["workers", "specialists", "PPO steps", "stage 2 (s)"],
                   [[r["workers"], r["specialists"], r["ppo_steps"], f"{r['stage2_s']:.0f}"]
                    for r in rows]))  # fmt: skip
    print(f"speed-up with {args.workers} workers: {ratio:.2f}x")


if __name__ == "__main__":
    main()
