"""What the ONNX integrity check costs at load: ``OnnxPolicy(path)`` with and without the
digest of the graph (``verify=True`` / ``verify=False``), side by side.

    python benchmarks/onnx_load.py [--hidden 64 1024 5000 --repeats 7]

For each size, an MLP (obs 32 -> hidden -> hidden -> action 4, tanh) is written with
``onnx.helper`` and stamped with its digest as the exporter does (no torch needed). Each
repeat loads every file both ways, the two variants taking turns (so a drifting machine
load hits them alike), after one untimed load of each: the file is in the page cache, as on
a robot that loads its policy after copying it. ``OnnxPolicy(..., warmup=False)``: the
onnxruntime session and the metadata, not a first inference. Prints medians in ms, and the
digest alone (:func:`robodistill.deploy.integrity.file_digest`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from robodistill.deploy.contract import complete_document
from robodistill.deploy.integrity import COVERS, file_digest, model_digest
from robodistill.deploy.metadata import FORMAT, FORMAT_VERSION, METADATA_KEY, dumps
from robodistill.deploy.runtime import OnnxPolicy

OBS, ACT = 32, 4


def write_mlp(path: Path, hidden: int, seed: int = 0) -> int:
    """An MLP policy file with robodistill metadata and digest; returns its parameter count."""
    rng = np.random.default_rng(seed)
    sizes = [OBS, hidden, hidden, ACT]
    nodes, inits, x = [], [], "obs"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        last = i == len(sizes) - 2
        y = "action" if last else f"h{i}"
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [y if last else f"z{i}"]))
        if not last:
            nodes.append(helper.make_node("Tanh", [f"z{i}"], [y]))
        x = y
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", OBS])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", ACT])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "policy_kind": "mlp_benchmark",
        "observation": {"shape": [OBS]}, "action": {"shape": [ACT]},
        "inputs": [{"name": "obs", "role": "observation", "shape": ["batch", OBS]}],
        "outputs": [{"name": "action", "role": "action", "shape": ["batch", ACT]}],
        "integrity": {"sha256": model_digest(model.SerializeToString()), "covers": COVERS},
    }  # fmt: skip
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, dumps(complete_document(doc))
    onnx.save(model, str(path))
    return sum(int(np.prod(t.dims)) for t in inits)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 1024, 5000])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {args.repeats} repeats, medians")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in args.hidden:
            path = Path(tmp) / f"mlp{hidden}.onnx"
            params = write_mlp(path, hidden)
            variants = {
                "without": lambda p=path: OnnxPolicy(p, verify=False, warmup=False),
                "with": lambda p=path: OnnxPolicy(p, verify=True, warmup=False),
                "digest": lambda p=path: file_digest(p),
            }
            assert OnnxPolicy(path, warmup=False).integrity == "verified"
            for fn in variants.values():  # untimed: page cache, onnxruntime's first load
                fn()
            times: dict[str, list[float]] = {k: [] for k in variants}
            for r in range(args.repeats):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in order:
                    times[name].append(timed(variants[name]))
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            rows.append({"hidden": hidden, "params": params,
                         "mb": path.stat().st_size / 2**20, **ms})  # fmt: skip
    print("| file | parameters | load without check | load with check | digest alone | "
          "overhead |\n| --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for r in rows:
        print(f"| {r['mb']:.2f} MB | {r['params']:,} | {r['without']:.2f} ms | "
              f"{r['with']:.2f} ms | {r['digest']:.2f} ms | "
              f"{r['with'] - r['without']:+.2f} ms ({100 * (r['with'] / r['without'] - 1):+.0f} %) |")  # fmt: skip
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
