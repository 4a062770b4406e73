"""The COMPASS generalist (kind ``"generalist"``): one policy for every embodiment.

::

    table = EmbodimentTable.from_specs([EMBODIMENTS[n] for n in names], n_slots=8)
    policy = Generalist.build(table, obs_stats, action_stats, log_std_stats, hidden=[256, 256])
    policy.for_embodiment("diffdrive").act(obs)     # (B, D) -> (B, A)
    policy.act(obs)                                 # after attach(envs): each row's own body

Inputs are padded to the largest :class:`EmbodimentSpec` (``D_max`` observation numbers,
``A_max`` action dims) and carry an embodiment code: the one-hot of the embodiment's slot in
the table (``n_slots`` wide, with free slots so that a new embodiment can be added by
fine-tuning without changing any tensor's shape). With ``embedding="learned"`` the code goes
through a learned linear embedding first. Output: a padded Gaussian ``(mean, log_std)`` (B,
A_max) and the action mask (B, A_max) of the embodiment; the action is ``clip(mean) * mask``.

Masks: an embodiment's observation mask is 1 on its first ``obs_dim`` numbers; its action
mask is 1 on its first ``action_dim`` dims except those its limits make void (a body that
cannot strafe has ``max_vy = 0``: its ``vy`` is masked). Masked dims are left out of the
distillation loss and zeroed in the output.

How the policy knows its embodiment: :meth:`Generalist.attach` reads
``env.unwrapped.embodiment_spec`` of each environment it acts in (an embodiment missing from
the table gets the code of the nearest one by :meth:`EmbodimentSpec.descriptor`: zero-shot);
:meth:`Generalist.for_embodiment` sets it by name; otherwise the table's default is used.
The table (names, slots, full specs) is saved in ``config.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from robodistill.envs.embodiments import EmbodimentSpec
from robodistill.envs.spaces import space_from_json, space_to_json
from robodistill.policies.base import Policy, register_policy
from robodistill.policies.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from robodistill.policies.compass import mlp
from robodistill.policies.mlp_student import LOG_STD_MAX, LOG_STD_MIN
from robodistill.policies.normalizer import Normalizer

log = logging.getLogger(__name__)


def action_mask(spec: EmbodimentSpec, act_dim: int) -> np.ndarray:
    """(act_dim,) float32: 1 where ``spec`` has a usable action dim (module docstring)."""
    mask = np.zeros(act_dim, np.float32)
    mask[: spec.action_dim] = 1.0
    limits = spec.action_limits
    mask[: len(limits)] *= (limits != 0).astype(np.float32)
    return mask


def pad(x: np.ndarray, width: int) -> np.ndarray:
    """(B, d) -> (B, width) float32, zeros appended (d <= width)."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    if x.shape[1] > width:
        raise ValueError(f"cannot pad {x.shape[1]} numbers into {width}")
    return np.pad(x, ((0, 0), (0, width - x.shape[1])))


class EmbodimentTable:
    """Embodiments the generalist knows: name -> (spec, slot). ``n_slots`` >= the count."""

    def __init__(self, specs: Sequence[EmbodimentSpec], slots: Sequence[int], n_slots: int,
                 obs_dim: int | None = None, act_dim: int | None = None):  # fmt: skip
        if len({s.name for s in specs}) != len(specs) or len(set(slots)) != len(slots):
            raise ValueError("EmbodimentTable: names and slots must be unique")
        if len(specs) != len(slots) or any(not 0 <= s < n_slots for s in slots):
            raise ValueError(f"EmbodimentTable: {len(specs)} embodiments need slots < {n_slots}")
        self.specs = {s.name: s for s in specs}
        self.slots = {s.name: int(slot) for s, slot in zip(specs, slots, strict=True)}
        self.n_slots = int(n_slots)
        self.obs_dim = int(obs_dim or max(s.obs_dim for s in specs))
        self.act_dim = int(act_dim or max(s.action_dim for s in specs))

    @classmethod
    def from_specs(cls, specs: Sequence[EmbodimentSpec], n_slots: int = 8) -> EmbodimentTable:
        return cls(list(specs), list(range(len(specs))), max(n_slots, len(specs)))

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def code(self, name: str) -> np.ndarray:
        """(n_slots,) float32 one-hot of ``name``'s slot."""
        code = np.zeros(self.n_slots, np.float32)
        code[self.slots[self.require(name)]] = 1.0
        return code

    def require(self, name: str) -> str:
        if name not in self.specs:
            raise KeyError(
                f"embodiment {name!r} is not in the generalist's table {self.names}; add it by "
                "fine-tuning (distill.generalist.finetune_embodiments) or pick a known one"
            )
        return name

    def nearest(self, spec: EmbodimentSpec) -> str:
        """The known embodiment whose descriptor is closest to ``spec``'s (L2)."""
        d = {n: float(np.linalg.norm(s.descriptor() - spec.descriptor()))
             for n, s in self.specs.items()}  # fmt: skip
        return min(d, key=d.get)

    def add(self, spec: EmbodimentSpec) -> int:
        """Give ``spec`` the first free slot; returns it."""
        if spec.name in self.specs:
            raise ValueError(f"embodiment {spec.name!r} is already in the table")
        free = sorted(set(range(self.n_slots)) - set(self.slots.values()))
        if not free:
            raise ValueError(f"all {self.n_slots} embodiment slots are used; train a new "
                             "generalist with a larger distill.generalist.max_embodiments")  # fmt: skip
        if spec.obs_dim > self.obs_dim or spec.action_dim > self.act_dim:
            raise ValueError(f"{spec.name!r} is larger than the padded sizes "
                             f"({self.obs_dim}, {self.act_dim}); train a new generalist")  # fmt: skip
        self.specs[spec.name], self.slots[spec.name] = spec, free[0]
        return free[0]

    def mask_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_slots, D_max) observation masks and (n_slots, A_max) action masks (free slots:
        zeros)."""
        obs = torch.zeros(self.n_slots, self.obs_dim)
        act = torch.zeros(self.n_slots, self.act_dim)
        for name, spec in self.specs.items():
            obs[self.slots[name], : spec.obs_dim] = 1.0
            act[self.slots[name]] = torch.from_numpy(action_mask(spec, self.act_dim))
        return obs, act

    def to_json(self) -> dict[str, Any]:
        return {"n_slots": self.n_slots, "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                "embodiments": [{"name": n, "slot": self.slots[n],
                                 "spec": json.loads(s.to_json())}
                                for n, s in self.specs.items()]}  # fmt: skip

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EmbodimentTable:
        rows = doc["embodiments"]
        return cls([EmbodimentSpec.from_json(r["spec"]) for r in rows], [r["slot"] for r in rows],
                   doc["n_slots"], doc["obs_dim"], doc["act_dim"])  # fmt: skip


class GeneralistNet(nn.Module):
    """``forward(obs (B, D_max) raw padded, code (B, n_slots)) -> (mean, log_std)`` (B, A_max)
    in env units; :meth:`mask` gives the action mask (B, A_max), :meth:`features` the trunk's
    output (B, H) (the representation a fine-tuning residual sees)."""

    def __init__(self, obs_dim: int, act_dim: int, n_slots: int, hidden: list[int],
                 activation: str = "Tanh", embedding: str = "onehot", embed_dim: int = 16,
                 obs_clip: float = 10.0):  # fmt: skip
        super().__init__()
        if embedding not in ("onehot", "learned"):
            raise ValueError(f"embedding must be 'onehot' or 'learned', got {embedding!r}")
        self.obs_dim, self.act_dim, self.n_slots = obs_dim, act_dim, n_slots
        self.embedding, self.obs_clip = embedding, float(obs_clip)
        self.normalizer = Normalizer({"obs": (obs_dim,), "action": (act_dim,),
                                      "log_std": (act_dim,)}, mode="gaussian")  # fmt: skip
        self.register_buffer("obs_masks", torch.zeros(n_slots, obs_dim))
        self.register_buffer("action_masks", torch.zeros(n_slots, act_dim))
        self.embed = nn.Linear(n_slots, embed_dim, bias=False) if embedding == "learned" else None
        code_width = embed_dim if embedding == "learned" else n_slots
        self.trunk = mlp([obs_dim + code_width, *hidden], activation, last_activation=True)
        self.mu = nn.Linear(int(hidden[-1]), act_dim)
        self.log_std = nn.Linear(int(hidden[-1]), act_dim)

    def code_columns(self) -> torch.Tensor:
        """The weight whose column ``k`` is what slot ``k``'s one-hot contributes."""
        if self.embed is not None:
            return self.embed.weight
        return self.trunk[0].weight[:, self.obs_dim :]

    def features(self, obs: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        x = self.normalizer.normalize("obs", obs).clamp(-self.obs_clip, self.obs_clip)
        x = x * (code @ self.obs_masks)  # padded numbers contribute exactly nothing
        e = self.embed(code) if self.embed is not None else code
        return self.trunk(torch.cat([x, e], dim=-1))

    def mask(self, code: torch.Tensor) -> torch.Tensor:
        return code @ self.action_masks

    def forward(self, obs: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(obs, code)
        mean = self.normalizer.unnormalize("action", self.mu(h))
        log_std = self.normalizer.unnormalize("log_std", self.log_std(h))
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


class GeneralistActor(nn.Module):
    """``(obs (B, D_max), code (B, n_slots)) -> clip(mean, low, high) * mask (B, A_max)``."""

    def __init__(self, net: GeneralistNet, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())

    def forward(self, obs: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        mean, _ = self.net(obs, code)
        return torch.maximum(torch.minimum(mean, self.high), self.low) * self.net.mask(code)


@register_policy
class Generalist(Policy):
    """Embodiment-conditioned Gaussian MLP distilled from the specialists (module doc).

    Args:
        net: the :class:`GeneralistNet` (normalizers and mask tables set).
        table: the :class:`EmbodimentTable`.
        action_space: the padded action Box (A_max).
        hidden, activation, embed_dim: the architecture, recorded in ``config.json``.
        default: the embodiment used when nothing else says which.
    """

    kind = "generalist"

    def __init__(self, net: GeneralistNet, table: EmbodimentTable, action_space: gym.spaces.Box,
                 hidden: list[int], activation: str, embed_dim: int, default: str):  # fmt: skip
        self.net, self.table = net.eval(), table
        self.hidden, self.activation, self.embed_dim = (
            [int(w) for w in hidden],
            activation,
            embed_dim,
        )
        self.action_space = action_space
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (table.obs_dim,), np.float32)
        low = torch.as_tensor(action_space.low.reshape(-1), dtype=torch.float32)
        high = torch.as_tensor(action_space.high.reshape(-1), dtype=torch.float32)
        self.actor = GeneralistActor(net, low, high).eval()
        self.refresh_masks()
        self.current = table.require(default)
        self._rows: list[str] | None = None
        self._warned: set[str] = set()

    @classmethod
    def build(cls, table: EmbodimentTable, action_space: gym.spaces.Box, stats: Mapping[str, Any],
              hidden: list[int], activation: str = "Tanh", embedding: str = "onehot",
              embed_dim: int = 16, obs_clip: float = 10.0, seed: int | None = None,
              default: str | None = None) -> Generalist:  # fmt: skip
        """A fresh generalist; ``stats``: ``{"obs", "action", "log_std"}`` statistics over
        padded observations, teacher means and teacher log-stds."""
        if seed is not None:
            torch.manual_seed(seed)
        net = GeneralistNet(table.obs_dim, table.act_dim, table.n_slots, hidden, activation,
                            embedding, embed_dim, obs_clip)  # fmt: skip
        fitted = Normalizer.from_stats({k: stats[k] for k in ("obs", "action", "log_std")},
                                       "gaussian")  # fmt: skip
        net.normalizer.load_state_dict(fitted.state_dict())
        return cls(net, table, action_space, hidden, activation, embed_dim,
                   default or table.names[0])  # fmt: skip

    def refresh_masks(self) -> None:
        """Copy the table's masks into the network (after :meth:`add_embodiment`)."""
        obs, act = self.table.mask_tables()
        self.net.obs_masks.copy_(obs)
        self.net.action_masks.copy_(act)

    def add_embodiment(self, spec: EmbodimentSpec, init_from: str | None = None) -> str:
        """Add ``spec`` in a free slot whose code starts as ``init_from``'s (default: the
        nearest known embodiment), so the new body starts from its closest relative's
        behaviour; fine-tuning then adapts it. Returns ``init_from``."""
        source = init_from or self.table.nearest(spec)
        slot = self.table.add(spec)
        with torch.no_grad():
            cols = self.net.code_columns()
            cols[:, slot] = cols[:, self.table.slots[source]]
        self.refresh_masks()
        return source

    # -- which embodiment ------------------------------------------------------------------
    def for_embodiment(self, name: str) -> Generalist:
        """Act as ``name`` from now on (rows set by :meth:`attach` are forgotten)."""
        self.current, self._rows = self.table.require(name), None
        return self

    def attach(self, envs: list) -> None:
        rows = []
        for env in envs:
            spec = getattr(env.unwrapped, "embodiment_spec", None)
            if spec is None:
                rows.append(self.current)
            elif spec.name in self.table.specs:
                rows.append(spec.name)
            else:
                near = self.table.nearest(spec)
                if spec.name not in self._warned:
                    self._warned.add(spec.name)
                    log.warning("generalist: embodiment %r is not in its table; acting "
                                "zero-shot with the code of the nearest, %r", spec.name, near)  # fmt: skip
                rows.append(near)
        self._rows = rows

    def row_names(self, batch: int) -> list[str]:
        return (
            self._rows
            if self._rows is not None and len(self._rows) == batch
            else [self.current] * batch
        )

    def codes(self, names: Sequence[str]) -> torch.Tensor:
        """(B, n_slots) one-hot codes of ``names``."""
        return torch.from_numpy(np.stack([self.table.code(n) for n in names]))

    # -- acting ----------------------------------------------------------------------------
    def _inputs(
        self, obs, names: Sequence[str] | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        obs = obs.numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs, np.float32)
        obs = obs.reshape(len(obs), -1)
        names = list(names) if names is not None else self.row_names(len(obs))
        return torch.from_numpy(pad(obs, self.table.obs_dim)), self.codes(names), names

    @torch.no_grad()
    def act(self, obs: np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
        """(B, D) -> (B, A) float32: each row's masked, clipped mean, cut to its action_dim."""
        x, code, names = self._inputs(obs, names)
        action = self.actor(x, code).numpy().astype(np.float32)
        dims = {self.table.specs[n].action_dim for n in names}
        return action[:, : dims.pop()] if len(dims) == 1 else action

    @torch.no_grad()
    def act_and_latent(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, D) -> (action (B, A), trunk features (B, H)): a base for a residual."""
        x, code, _ = self._inputs(obs, None)
        return self.act(obs), self.net.features(x, code).numpy()

    @torch.no_grad()
    def distribution(
        self, obs, names: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> padded (mean, log_std) (B, A_max) before the clip and mask."""
        x, code, _ = self._inputs(obs, names)
        mean, log_std = self.net(x, code)
        return mean.clone(), log_std.clone()

    # -- export / persistence --------------------------------------------------------------
    def onnx_spec(self) -> dict[str, Any]:
        """``direct`` graph ``(obs (B, D_max), embodiment (B, n_slots)) -> action (B, A_max)``;
        metadata ``embodiments`` holds the table's one-hot codes, default = the current one."""
        names = self.table.names
        return {
            "module": self.actor.eval(),
            "inputs": [
                {
                    "name": "obs",
                    "role": "observation",
                    "example": torch.zeros(2, self.table.obs_dim),
                },
                {
                    "name": "embodiment",
                    "role": "embodiment",
                    "example": self.codes([self.current] * 2),
                },
            ],
            "outputs": [{"name": "action", "role": "action"}],
            "metadata": {
                "policy_kind": self.kind,
                "policy": {
                    "hidden": self.hidden,
                    "activation": self.activation,
                    "embedding": self.net.embedding,
                    "n_slots": self.table.n_slots,
                },  # fmt: skip
                "mode": "direct",
                "deterministic": True,
                "observation": {**space_to_json(self.observation_space), "layout": None},
                "action": space_to_json(self.action_space),
                "embodiments": {
                    "names": names,
                    "codes": [self.table.code(n).tolist() for n in names],
                    "default": self.current,
                    "descriptors": {n: self.table.specs[n].describe() for n in names},
                },  # fmt: skip
                "normalization": {
                    "observation": "zero-padded to D_max; clip((obs - mean) / std) * obs_mask",
                    "action": "clip(offset + scale * mlp(obs, code), low, high) * action_mask",
                },
            },
        }

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "hidden": self.hidden, "activation": self.activation,
                "embedding": self.net.embedding, "embed_dim": self.embed_dim,
                "obs_clip": self.net.obs_clip, "table": self.table.to_json(),
                "default": self.current, "action_space": space_to_json(self.action_space)}  # fmt: skip

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` (with the embodiment table) + ``model.safetensors`` (``net.*``)."""
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        return save_checkpoint(directory, self.config(), tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Generalist:
        config, tensors = load_checkpoint(directory, kind=cls.kind)
        try:
            table = EmbodimentTable.from_json(config["table"])
            net = GeneralistNet(table.obs_dim, table.act_dim, table.n_slots, list(config["hidden"]),
                                config["activation"], config["embedding"], int(config["embed_dim"]),
                                float(config["obs_clip"]))  # fmt: skip
            action_space = space_from_json(config["action_space"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{directory}/config.json is not a valid generalist: {e}") from e
        load_state_dict_strict(net, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")},
                               directory)  # fmt: skip
        return cls(net, table, action_space, list(config["hidden"]), config["activation"],
                   int(config["embed_dim"]), config["default"])  # fmt: skip


__all__ = ["EmbodimentTable", "Generalist", "GeneralistNet", "action_mask", "pad"]
