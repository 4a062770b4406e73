"""Training-step speed of the diffusion teacher on this CPU: before and after, same process.

One step is what the imitation loop does per gradient step: sample a batch of windows from
RAM (:class:`SequenceSampler` over random Push-T-sized data), the denoising loss, backward,
AdamW, the diffusers EMA update. Variants (each warmed up, then the median of ``--steps``):

* the backbone and size (the default 1.1 M UNet vs the residual MLP), at batch 64 and 256;
* torch threads 1 vs 2 (the project's rule is one thread unless this shows otherwise);
* ``torch.compile`` of the denoiser (compile time reported apart);
* the EMA update with ``foreach``.

    python benchmarks/teacher_step_speed.py --steps 30

Prints steps/s and windows/s per variant and the ratio to the first row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import markdown  # noqa: E402

OBS_DIM, ACTION_DIM = 20, 2  # Push-T keypoints: 9 block keypoints + the pusher


def make_policy(backbone: str, **sizes):
    from robodistill.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
    from robodistill.policies.normalizer import Normalizer

    config = DiffusionPolicyConfig(obs_dim=OBS_DIM, action_dim=ACTION_DIM, backbone=backbone,
                                   **sizes)  # fmt: skip
    stats = {"obs": {"min": [0.0] * OBS_DIM, "max": [512.0] * OBS_DIM},
             "action": {"min": [-1.0] * ACTION_DIM, "max": [1.0] * ACTION_DIM}}  # fmt: skip
    return DiffusionPolicy(config, Normalizer.from_stats(stats, mode="minmax"))


def step_rate(policy, batch_size: int, steps: int, threads: int, compile_net: bool = False,
              ema_foreach: bool = False) -> dict:  # fmt: skip
    from robodistill.data.sampler import SequenceSampler

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    n = 20_000  # ~100 demos of Push-T
    data = {"obs": rng.uniform(0, 512, (n, OBS_DIM)).astype(np.float32),
            "action": rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32)}  # fmt: skip
    sampler = SequenceSampler(data, np.arange(200, n + 1, 200), obs_horizon=2, pred_horizon=16)
    optimizer = torch.optim.AdamW(policy.net.parameters(), 1e-4)
    ema = policy.make_ema()
    ema.foreach = ema_foreach
    compile_s = 0.0
    if compile_net:
        t = time.perf_counter()
        policy.net = torch.compile(policy.net)
        policy.compute_loss(sampler.sample(batch_size, rng))[0].backward()  # compiles
        compile_s = time.perf_counter() - t
    times = []
    for i in range(steps + 5):
        t = time.perf_counter()
        loss, _ = policy.compute_loss(sampler.sample(batch_size, rng))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(policy.net.parameters())
        if i >= 5:
            times.append(time.perf_counter() - t)
    rate = 1.0 / float(np.median(times))
    return {"steps_per_s": rate, "windows_per_s": rate * batch_size, "compile_s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    unet = {"down_dims": (32, 64, 128), "step_embed_dim": 64}
    mlp = {"mlp_width": 1024, "mlp_blocks": 3}
    variants = [  # (label, backbone, sizes, batch, threads, compile, ema foreach)
        ("UNet 1.1 M, batch 64 (before)", "unet", unet, 64, 1, False, False),
        ("UNet 1.1 M, batch 256", "unet", unet, 256, 1, False, False),
        ("UNet 1.1 M, batch 64, 2 threads", "unet", unet, 64, 2, False, False),
        ("UNet 1.1 M, batch 64, torch.compile", "unet", unet, 64, 1, True, False),
        ("UNet 1.1 M, batch 64, EMA foreach", "unet", unet, 64, 1, False, True),
        ("UNet 1.1 M, batch 256, 2 threads", "unet", unet, 256, 2, False, False),
        ("MLP 512x3, batch 256", "mlp", {"mlp_width": 512, "mlp_blocks": 3}, 256, 1, False, False),
        ("MLP 1024x3, batch 256", "mlp", mlp, 256, 1, False, False),
        ("MLP 1024x3, batch 256, 2 threads", "mlp", mlp, 256, 2, False, False),
        ("MLP 1024x3, batch 256, EMA foreach", "mlp", mlp, 256, 1, False, True),
        ("MLP 1024x3, batch 256, torch.compile", "mlp", mlp, 256, 1, True, False),
    ]  # fmt: skip
    rows, first = [], None
    for label, backbone, sizes, batch, threads, compile_net, foreach in variants:
        torch.manual_seed(0)
        policy = make_policy(backbone, **sizes)
        r = step_rate(policy, batch, args.steps, threads, compile_net, foreach)
        first = first or r["windows_per_s"]
        rows.append([label, f"{policy.num_parameters / 1e6:.2f} M", f"{r['steps_per_s']:.2f}",
                     f"{r['windows_per_s']:.0f}", f"{r['windows_per_s'] / first:.1f}x",
                     f"{r['compile_s']:.0f} s" if compile_net else "—"])  # fmt: skip
        print(" | ".join(rows[-1]), flush=True)
    print("\n" + markdown(["variant", "parameters", "steps/s", "windows/s",
                           "windows/s vs before", "compile"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
