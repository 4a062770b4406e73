"""``store export`` / ``store import`` against the other tools' own readers and writers, which
cannot share the project's environment (zarr-python 2 conflicts with zarr 3; ``lerobot`` pins
an older torch): they run in a throwaway venv with ``zarr<3``, ``datasets`` and ``pandas``.

    python benchmarks/formats_external.py --venv /tmp/formats-venv   # created when missing

Checks, printing one line each and exiting 1 on the first failure:
  (a) zarr-python 2 opens the zarr2 export the way diffusion_policy's ``ReplayBuffer`` does
      (``zarr.open`` + ``copy_from_store``'s numpy backend, its asserts) and gets the arrays;
  (b) a replay buffer written with zarr-python 2 as ``ReplayBuffer.add_episode`` writes one
      imports into a store with the same arrays and episode ends;
  (c) HF ``datasets`` loads the LeRobot export as LeRobot v3 does (``Dataset.from_parquet`` with
      the features of ``meta/info.json``), every episode row's frames and task resolve.
Minari needs no venv: tests/test_store_formats.py uses the real package.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import datasets, numcodecs, numpy as np, pandas as pd, zarr
    dp, lerobot, new = sys.argv[1:4]
    # (a) diffusion_policy ReplayBuffer.copy_from_path, numpy backend
    src_root = zarr.group(zarr.open(dp, "r").store)
    meta = {k: np.array(v) if len(v.shape) == 0 else v[:] for k, v in src_root["meta"].items()}
    data = {k: src_root["data"][k][:] for k in src_root["data"].keys()}
    assert all(v.shape[0] == meta["episode_ends"][-1] for v in data.values())
    np.savez(Path(new).parent / "read_by_zarr2.npz", **{"data/" + k: v for k, v in data.items()},
             **{"meta/" + k: v for k, v in meta.items()})
    # (b) ReplayBuffer.create_empty_zarr + add_episode
    root = zarr.open(new, "w")
    d, m = root.require_group("data"), root.require_group("meta")
    m.zeros("episode_ends", shape=(0,), dtype=np.int64, compressor=None)
    cpr = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    rng, n = np.random.default_rng(0), 0
    for t in (10, 15, 6):
        ep = {"state": rng.normal(size=(t, 5)).astype(np.float32),
              "action": rng.normal(size=(t, 2)).astype(np.float32),
              "img": rng.random(size=(t, 8, 8, 3)).astype(np.float32)}
        for k, v in ep.items():
            if k not in d:
                d.zeros(k, shape=(0, *v.shape[1:]), chunks=(7, *v.shape[1:]), dtype=v.dtype,
                        compressor=cpr)
            d[k].resize((n + t, *v.shape[1:]))
            d[k][n:] = v
        n += t
        m["episode_ends"].resize(len(m["episode_ends"]) + 1)
        m["episode_ends"][-1] = n
    # (c) LeRobot v3 loading: get_hf_features_from_features + load_nested_dataset
    info = json.loads(Path(lerobot, "meta/info.json").read_text())
    feats = {}
    for key, ft in info["features"].items():
        shape, dtype = tuple(ft["shape"]), ft["dtype"]
        feats[key] = (datasets.Value(dtype) if shape == (1,) else
                      datasets.Sequence(length=shape[0], feature=datasets.Value(dtype))
                      if len(shape) == 1 else
                      getattr(datasets, f"Array{len(shape)}D")(shape=shape, dtype=dtype))
    paths = sorted(str(p) for p in Path(lerobot, "data").glob("*/*.parquet"))
    frames = datasets.Dataset.from_parquet(paths, features=datasets.Features(feats))
    frames.set_format("numpy")
    eps = datasets.Dataset.from_parquet(
        sorted(str(p) for p in Path(lerobot, "meta/episodes").glob("*/*.parquet")))
    tasks = pd.read_parquet(Path(lerobot, "meta/tasks.parquet"))
    for e in eps:
        part = frames[e["dataset_from_index"] : e["dataset_to_index"]]
        assert (part["episode_index"] == e["episode_index"]).all()
        assert len(part["index"]) == e["length"]
        assert tasks.index[int(part["task_index"][0])] in e["tasks"]
    print(json.dumps({"frames": len(frames), "episodes": len(eps),
                      "zarr": zarr.__version__, "datasets": datasets.__version__}))
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "formats-venv")
    args = ap.parse_args()
    python = args.venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "zarr<3", "datasets", "pandas",
                        "numpy"], check=True)  # fmt: skip

    from test_store_formats import fill

    from robodistill.data.formats import export_store, import_store
    from robodistill.data.formats.common import seed_order
    from robodistill.data.store import TrajectoryStore

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = fill(tmp / "demos.zarr")
        export_store(store, tmp / "dp.zarr", "zarr2")
        export_store(store, tmp / "lerobot", "lerobot")
        out = subprocess.run([str(python), "-c", CHILD, str(tmp / "dp.zarr"), str(tmp / "lerobot"),
                              str(tmp / "new.zarr")], capture_output=True, text=True)  # fmt: skip
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return 1
        versions = json.loads(out.stdout.strip().splitlines()[-1])
        read = np.load(tmp / "read_by_zarr2.npz")
        with TrajectoryStore.open(store) as s:
            order = seed_order(s.episode_meta()["seed"])
            eps = [s.episode(int(i)) for i in order]
        for k in eps[0].data:
            assert np.array_equal(read[f"data/{k}"], np.concatenate([e.data[k] for e in eps])), k
        assert read["meta/episode_seed"].tolist() == [e.seed for e in eps]
        print(f"(a) zarr {versions['zarr']} reads the zarr2 export as ReplayBuffer does: ok")
        import_store(tmp / "new.zarr", tmp / "imported.zarr", "zarr2")
        with TrajectoryStore.open(tmp / "imported.zarr") as s:
            assert s.episode_ends.tolist() == [10, 25, 31] and set(s.keys) >= {"obs", "img"}
        print("(b) a buffer written with zarr 2 as ReplayBuffer.add_episode writes imports: ok")
        print(f"(c) datasets {versions['datasets']} loads the LeRobot export as LeRobot v3 does "
              f"({versions['frames']} frames, {versions['episodes']} episodes): ok")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
