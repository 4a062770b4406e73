"""Drive any robodistill .onnx policy with numpy and onnxruntime only, for one robot.

Every rule used is a field of the file's metadata (format 2, see the schema in
robodistill/deploy/metadata_schema.json). Seeded like robodistill's OnnxPolicy (one numpy
Generator, draws in the same order), it returns the same actions, bit for bit."""

import json

import numpy as np
import onnxruntime as ort


def normal(rng, shape, std, draw=True):  # float64 draws, scaled, then float32 (or zeros)
    return (rng.standard_normal(shape) * std).astype(np.float32) if draw else np.zeros(shape, "f4")


class ReferenceRunner:
    def __init__(self, path, seed=0, embodiment=None):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.m = m = json.loads(self.sess.get_modelmeta().custom_metadata_map["robodistill"])
        assert m["format_version"] == 2 and m["history"]["padding"] == "repeat_first"
        self.ins = {e["role"]: e for e in m["inputs"] if e["role"] != "state"}
        self.outs = {e["role"]: e["name"] for e in m["outputs"]}
        self.out = self.outs.get("chunk", self.outs.get("action"))
        if m["embodiments"]:  # the code of the robot's body, fed every step
            names, codes = m["embodiments"]["names"], m["embodiments"]["codes"]
            self.code = np.float32(codes[names.index(embodiment or m["embodiments"]["default"])])
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self):  # a new episode clears all that m["episode"]["reset"] lists
        self.hist, self.queue, self.ens, self.n, self.plan, self.state = None, [], None, 0, None, {}
        for s in self.m["state"]:  # zeros, or std * N(0, 1): fresh for each episode
            self.state[s["input"]] = normal(
                self.rng, (1, *s["shape"]), s["std"], s["init"] == "normal"
            )

    def act(self, obs):
        m, x = self.m, np.asarray(obs, np.float32).reshape(1, 1, -1)
        if self.hist is None:  # oldest first; an episode's first obs fills the history
            self.hist = np.repeat(x, m["horizons"]["observation"], 1)
        self.hist = np.concatenate([self.hist[:, 1:], x], 1)
        obs_in = self.hist if len(self.ins["observation"]["shape"]) == 3 else x[:, 0]
        if m["chunk"] is None:  # one action per call
            return self.infer(obs_in)[0]
        start, stop = m["chunk"]["executed"]
        if m["chunk_execution"] == "receding":  # execute chunk[start:stop], then plan again
            self.queue = self.queue or list(self.infer(obs_in)[0, start:stop])
            return self.queue.pop(0)
        chunk = self.infer(obs_in)[:, start:]  # temporal ensembling of the chunks so far
        te, j = chunk.shape[1], np.arange(chunk.shape[1])
        self.ens = np.zeros((1, te, *chunk.shape[1:]), np.float32) if self.ens is None else self.ens
        self.ens = np.roll(self.ens, 1, axis=1)  # ens[:, k]: the chunk made k steps ago
        self.ens[:, 0], self.n = chunk, min(self.n + 1, te)
        w = np.where(j < self.n, np.exp(-m["ensemble_decay"] * (self.n - 1 - j)), 0.0)[None]
        return ((w[..., None] * self.ens[:, j, j]).sum(1) / w.sum(1)[:, None])[0].astype(np.float32)

    def infer(self, obs_in):
        m, feed = self.m, {self.ins["observation"]["name"]: obs_in, **self.state}
        if "embodiment" in self.ins:
            feed[self.ins["embodiment"]["name"]] = self.code[None]
        if m["mode"] == "denoise":
            return self.denoise(feed)
        for e in m["noise"]["inputs"] if m["noise"] else []:  # the input's exact shape
            feed[e["name"]] = normal(self.rng, (1, *e["shape"][1:]), m["noise"]["std"])
        out = self.sess.run([self.out] + [s["output"] for s in m["state"]], feed)
        self.state = {s["input"]: v for s, v in zip(m["state"], out[1:], strict=True)}  # carried on
        return out[0]

    def denoise(self, feed):
        d, shape, t = self.m["denoise"], (1, *self.ins["sample"]["shape"][1:]), self.ins["timestep"]
        steps, warm = d["steps"], d.get("warm_start")
        x = normal(self.rng, shape, d["init_std"])
        if warm and self.plan is not None:  # RTI: shift the last plan, re-noise, run the tail
            steps, s = steps[len(steps) - warm["steps"] :], min(warm["shift"], shape[1] - 1)
            a = float(np.float32(steps[0]["coef"][0])) ** 2
            prev = np.concatenate([self.plan[:, s:], np.repeat(self.plan[:, -1:], s, 1)], 1)
            dims = warm["discrete_dims"]
            prev[..., dims] = np.where(prev[..., dims] >= 0, 1.0, -1.0)
            x = (np.sqrt(a) * prev + np.sqrt(1 - a) * x).astype(np.float32)
        for step in steps:  # noise per step: N(0, 1), or zeros where sigma (coef[5]) is 0
            coef = np.float32(step["coef"])
            feed[self.ins["sample"]["name"]], feed[self.ins["step_coef"]["name"]] = x, coef
            feed[t["name"]] = np.full((1, *t["shape"][1:]), step["timestep"], t["dtype"])
            if "noise" in self.ins:
                feed[self.ins["noise"]["name"]] = normal(self.rng, shape, 1.0, coef[5] != 0)
            x, out = self.sess.run([self.outs["sample"], self.out], feed)
        self.plan = x if warm else None
        return out
