"""A privileged Push-T expert: plan a straight push by simulating candidates, walk round, push.

Each cycle (all in workspace units, see :mod:`robodistill.envs.pusht`)::

      pre-push point (standoff off the face)        1. plan: for ~24 contact points on the
            o ---> |####### bar #######|               T's faces, simulate a straight push
                   |  ^                                (MjData copy of the env's model) and
                   |  | 2. travel round the T         score every prefix of it by keypoint
                   |  |    (visibility graph over      error reduced per control step spent
                   |  o    the inflated convex hull)   (travel + push).
                         3. push k steps, back off, re-plan.

Near-equal choices (contact candidates within ``tie_tolerance`` of the best score, and the
last waypoint of the route round the block) are broken by a per-episode generator seeded
from ``(seed, env.episode_seed)``, so the expert is deterministic given the env's seed but
goes round the block by different sides across episodes.

No longer the registered expert of ``robodistill/PushT-v0``: its hidden phases, random
push lengths and 45-unit look-ahead are hard to imitate from two observation frames, so
:mod:`robodistill.envs.pusht_smooth_expert` replaced it. It stays as the baseline of
``benchmarks/pusht_expert.py`` and the planner of ``benchmarks/ope_ranking.py``. Its
contact candidates and hull routing geometry are shared with the smooth expert, and so is
:class:`PrivilegedPushTExpert`, the base class of both (per-row episode state, ``act``,
keypoint error, route graph round the T).

Only numpy and mujoco: the module never imports torch.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

import mujoco
import numpy as np

from robodistill.envs.pusht import (
    GOAL_POSE,
    PUSHER_RADIUS,
    TEE_KEYPOINTS,
    UNIT,
    WORKSPACE,
    block_pose_from_qpos,
    qpos_from_units,
    rotation,
    tee_distance,
    tee_to_world,
)
from robodistill.policies.base import Policy, register_policy

# Contact candidates in the block frame: (contact x, contact y, outward normal x, normal y,
# face index). Contacts sit far enough from inner corners that the pusher touches the face.
_FACES = [
    # face 0: outer edge of the bar (y = 0)
    *[(x, 0.0, 0.0, -1.0, 0) for x in (-52.0, -30.0, -10.0, 10.0, 30.0, 52.0)],
    *[(60.0, y, 1.0, 0.0, 1) for y in (8.0, 22.0)],  # face 1: right end of the bar
    *[(x, 30.0, 0.0, 1.0, 2) for x in (36.0, 54.0)],  # face 2: under the bar, right
    *[(15.0, y, 1.0, 0.0, 3) for y in (52.0, 80.0, 110.0)],  # face 3: right of the stem
    *[(x, 120.0, 0.0, 1.0, 4) for x in (-9.0, 0.0, 9.0)],  # face 4: end of the stem
    *[(-15.0, y, -1.0, 0.0, 5) for y in (52.0, 80.0, 110.0)],  # face 5: left of the stem
    *[(x, 30.0, 0.0, 1.0, 6) for x in (-36.0, -54.0)],  # face 6: under the bar, left
    *[(-60.0, y, -1.0, 0.0, 7) for y in (8.0, 22.0)],  # face 7: left end of the bar
]
CONTACTS = np.array([f[:2] for f in _FACES])
NORMALS = np.array([f[2:4] for f in _FACES])
FACE_OF = np.array([f[4] for f in _FACES])

# Convex hull of the T (counter-clockwise in the block frame) for routing round it.
_HULL = np.array(
    [[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [15.0, 120.0], [-15.0, 120.0], [-60.0, 30.0]]
)


def _offset_polygon(poly: np.ndarray, d: float) -> np.ndarray:
    """Vertices of ``poly`` (N, 2, any orientation, convex) moved out so edges are ``d`` away."""
    centre = poly.mean(axis=0)
    out = []
    n = len(poly)
    for i in range(n):
        prev, cur, nxt = poly[i - 1], poly[i], poly[(i + 1) % n]
        normals = []
        for a, b in ((prev, cur), (cur, nxt)):
            e = b - a
            nrm = np.array([e[1], -e[0]]) / np.linalg.norm(e)
            if np.dot(nrm, (a + b) / 2 - centre) < 0:
                nrm = -nrm
            normals.append(nrm)
        n1, n2 = normals
        out.append(cur + d * (n1 + n2) / (1.0 + n1 @ n2))
    return np.array(out)


class PrivilegedPushTExpert(Policy):
    """What the privileged Push-T experts share (not registered: a base class).

    Per-batch-row episode state, renewed by ``reset`` or when the row's env was reset
    behind the expert's back, a MuJoCo ``MjData`` per row to simulate pushes on, the
    keypoint error to the goal and the route graph round the T's inflated convex hull.

    Subclasses implement ``_new_row(i)`` (fresh episode state for row ``i``, from
    :meth:`_episode_rng` and :meth:`_episode_marker`) and ``_act_row(i)`` (row ``i``'s next
    pusher target, units), and list in ``info_fields`` the row fields that
    :meth:`episode_info` reports.
    """

    info_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, seed: int, clearance: float, tie_tolerance: float):
        self.seed = int(seed)
        self.clearance = float(clearance)
        self.tie_tolerance = float(tie_tolerance)
        self.envs: list = []
        self._rows: list = []
        self._sims: list[mujoco.MjData] = []
        self._goal_kp = tee_to_world(GOAL_POSE, TEE_KEYPOINTS)
        # Waypoints far enough out that cutting a corner at look-ahead speed stays clear.
        self._hull_nodes = _offset_polygon(_HULL, PUSHER_RADIUS + self.clearance + 12.0)

    # --------------------------------------------------------------------- Policy API
    def attach(self, envs: list) -> None:
        self.envs = [e.unwrapped for e in envs]
        self._sims = [mujoco.MjData(e.model) for e in self.envs]
        self._rows = [self._new_row(i) for i in range(len(self.envs))]

    def reset(self, env_ids=None) -> None:
        ids = range(len(self.envs)) if env_ids is None else [int(i) for i in env_ids]
        for i in ids:
            self._rows[i] = self._new_row(i)

    def act(self, obs) -> np.ndarray:
        """``obs`` (B, ...) -> (B, 2) float32 pusher targets in [-1, 1]."""
        batch = len(obs["agent_pos"]) if isinstance(obs, dict) else np.asarray(obs).shape[0]
        if batch != len(self.envs):
            raise ValueError(f"got {batch} observations for {len(self.envs)} attached envs")
        out = np.empty((batch, 2), np.float32)
        for i in range(batch):
            target = self._act_row(i)
            out[i] = np.clip(target / WORKSPACE * 2.0 - 1.0, -1.0, 1.0)
        return out

    def episode_info(self, row: int) -> dict:
        """What the expert did in ``row``'s episode so far (for multimodality statistics)."""
        r = self._rows[row]
        return {name: getattr(r, name) for name in self.info_fields}

    # ------------------------------------------------------------------------ per row
    @abc.abstractmethod
    def _new_row(self, i: int):
        """Fresh episode state for row ``i`` (its ``marker`` from :meth:`_episode_marker`)."""

    @abc.abstractmethod
    def _act_row(self, i: int) -> np.ndarray:
        """Row ``i``'s next pusher target (2,), units (clipped to the workspace by ``act``)."""

    def _episode_rng(self, i: int) -> np.random.Generator:
        """Row ``i``'s episode generator, seeded from ``(seed, env.episode_seed)``."""
        env = self.envs[i]
        return np.random.default_rng([self.seed, int(getattr(env, "episode_seed", 0))])

    def _episode_marker(self, i: int) -> int:
        """Row ``i``'s env reset count: the episode a row's state belongs to."""
        return int(getattr(self.envs[i], "num_resets", 0))

    def _row(self, i: int):
        """Row ``i``'s state, made afresh if its env was reset without our ``reset()``."""
        row = self._rows[i]
        if row.marker != self._episode_marker(i):
            # The env was reset without our reset(): start the new episode anyway.
            row = self._rows[i] = self._new_row(i)
        return row

    # ------------------------------------------------------------------------ planning
    def _error(self, poses: np.ndarray) -> np.ndarray:
        """Mean keypoint distance to the goal for poses (..., 3) -> (...), units."""
        c, s = np.cos(poses[..., 2]), np.sin(poses[..., 2])
        kx, ky = TEE_KEYPOINTS[:, 0], TEE_KEYPOINTS[:, 1]
        x = poses[..., 0, None] + c[..., None] * kx - s[..., None] * ky
        y = poses[..., 1, None] + s[..., None] * kx + c[..., None] * ky
        return np.mean(np.hypot(x - self._goal_kp[:, 0], y - self._goal_kp[:, 1]), axis=-1)

    def _route_graph(self, pose: np.ndarray, start: np.ndarray, nodes: np.ndarray, goals):
        """Shortest collision-free routes ``start`` -> hull ``nodes`` (world frame, units)
        round the T at ``pose``, and on to each of ``goals`` (G, 2).

        Returns ``via`` (n, G) route lengths to each goal through each last node (inf where
        blocked), the points (n, 2; 0 = start, then ``nodes``), and the shortest distances
        and next-hop table (n, n) between them (see :meth:`_node_path`).
        """
        pts = np.concatenate([start[None], nodes])  # 0 = start
        n = len(pts)
        need = PUSHER_RADIUS + self.clearance * 0.6
        need_start = min(need, float(tee_distance(pose, start)) - 0.5)

        def clear(a: np.ndarray, b: np.ndarray, thr: np.ndarray) -> np.ndarray:
            # a, b (M, 2): is the segment at least thr (M,) from the T everywhere?
            t = np.linspace(0.0, 1.0, 24)
            samples = a[:, None] + (b - a)[:, None] * t[None, :, None]
            return tee_distance(pose, samples).min(axis=1) >= thr

        ii, jj = np.triu_indices(n, 1)
        ok = clear(pts[ii], pts[jj], np.where(ii == 0, need_start, need))
        dist = np.full((n, n), np.inf)
        np.fill_diagonal(dist, 0.0)
        lens = np.linalg.norm(pts[ii] - pts[jj], axis=1)
        dist[ii[ok], jj[ok]] = dist[jj[ok], ii[ok]] = lens[ok]
        nxt = np.tile(np.arange(n), (n, 1))
        for k in range(n):  # Floyd-Warshall on <= 7 nodes
            through = dist[:, k, None] + dist[None, k, :]
            better = through < dist
            dist = np.where(better, through, dist)
            nxt = np.where(better, nxt[:, k, None], nxt)
        g = len(goals)
        gi, gg = np.repeat(np.arange(n), g), np.tile(np.arange(g), n)
        ok = clear(pts[gi], goals[gg], np.where(gi == 0, need_start, need)).reshape(n, g)
        last = np.linalg.norm(pts[:, None] - goals[None], axis=2)
        via = np.where(ok, dist[0][:, None] + last, np.inf)  # (n, G): route via last node j
        return via, pts, dist, nxt

    @staticmethod
    def _node_path(pts: np.ndarray, nxt: np.ndarray, j: int) -> np.ndarray:
        """The shortest route's points (m, 2) from ``pts[0]`` to ``pts[j]`` (reachable)."""
        path, cur = [pts[0]], 0
        while cur != j:
            cur = int(nxt[cur, j])
            path.append(pts[cur])
        return np.array(path)


@dataclass
class _Row:
    """Per-batch-row episode state."""

    rng: np.random.Generator
    marker: int = -1  # env.num_resets when this row's state was made
    phase: str = "plan"  # plan | travel | push | retreat
    path: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    prepush: np.ndarray = field(default_factory=lambda: np.zeros(2))
    direction: np.ndarray = field(default_factory=lambda: np.zeros(2))
    speed: float = 0.0
    push_steps: int = 0
    push_done: int = 0
    planned_pose: np.ndarray = field(default_factory=lambda: np.zeros(3))
    travel_steps: int = 0
    first_side: str | None = None  # "ccw" | "cw" | "direct": first route round the T
    first_face: int | None = None
    pushes: int = 0


@register_policy
class PushTExpert(PrivilegedPushTExpert):
    """Privileged push planner for ``robodistill/PushT-v0`` (reads the MuJoCo state).

    Args:
        seed: mixed with each episode's ``env.episode_seed`` for tie-breaking.
        push_speed: pusher travel per control step while pushing, units (far from goal).
        travel_speed: look-ahead along the route per control step while travelling, units.
        standoff: gap between the pusher's surface and the face at the pre-push point, units.
        clearance: extra clearance kept from the T while travelling, units.
        max_push_steps: longest push simulated per candidate, control steps.
        tie_tolerance: candidates scoring within this fraction of the best are equivalent.

    ``act(obs)`` ignores ``obs`` beyond its batch size and returns (B, 2) float32 actions in
    [-1, 1] (the env's absolute pusher target).
    """

    kind = "expert/pusht"
    info_fields = ("first_side", "first_face", "pushes")

    def __init__(
        self,
        seed: int = 0,
        push_speed: float = 12.0,
        travel_speed: float = 45.0,
        standoff: float = 6.0,
        clearance: float = 5.0,
        max_push_steps: int = 8,
        tie_tolerance: float = 0.15,
    ):
        super().__init__(seed, clearance, tie_tolerance)
        self.push_speed = float(push_speed)
        self.travel_speed = float(travel_speed)
        self.standoff = float(standoff)
        self.max_push_steps = int(max_push_steps)

    # ------------------------------------------------------------------------ internals
    def _new_row(self, i: int) -> _Row:
        return _Row(rng=self._episode_rng(i), marker=self._episode_marker(i))

    def _act_row(self, i: int) -> np.ndarray:
        env, row = self.envs[i], self._row(i)
        pusher = env.pusher_position()
        pose = env.block_pose()

        if row.phase == "travel":
            moved = np.abs(pose - row.planned_pose) > (1.0, 1.0, 0.01)
            if np.any(moved):
                row.phase = "plan"  # we nudged the block (or it was still settling)
            elif np.linalg.norm(pusher - row.prepush) < 2.5:
                row.phase, row.push_done = "push", 0
            else:
                return self._follow_path(row, pusher)
        if row.phase == "push":
            if row.push_done < row.push_steps:
                row.push_done += 1
                return row.prepush + row.direction * row.speed * row.push_done
            row.phase = "retreat"
            return pusher - row.direction * 10.0
        if row.phase == "retreat":
            row.phase = "plan"
        return self._plan(i, row, pusher, pose)

    def _follow_path(self, row: _Row, pusher: np.ndarray) -> np.ndarray:
        # Carrot on the route: the point travel_speed ahead of the pusher's projection.
        path = row.path
        seg = path[1:] - path[:-1]
        lengths = np.linalg.norm(seg, axis=1)
        best_s, best_d, cum = 0.0, np.inf, 0.0
        for a, d, length in zip(path[:-1], seg, lengths, strict=True):
            t = 0.0 if length == 0 else np.clip((pusher - a) @ d / length**2, 0.0, 1.0)
            dist = np.linalg.norm(a + t * d - pusher)
            if dist < best_d:
                best_d, best_s = dist, cum + t * length
            cum += length
        s = min(best_s + self.travel_speed, cum)
        cum = 0.0
        for a, d, length in zip(path[:-1], seg, lengths, strict=True):
            if s <= cum + length and length > 0:
                return a + d * (s - cum) / length
            cum += length
        return path[-1]

    def _simulate(self, i: int, prepush: np.ndarray, direction: np.ndarray, speed: float):
        """Block poses (K, 3) after each control step of a straight push from ``prepush``."""
        env, sim = self.envs[i], self._sims[i]
        sim.qpos[:] = qpos_from_units(prepush, env.block_pose())
        sim.qvel[:] = 0.0
        sim.ctrl[:] = sim.qpos[0:2]
        poses = np.empty((self.max_push_steps, 3))
        for k in range(self.max_push_steps):
            sim.ctrl[:] = (prepush + direction * speed * (k + 1)) * UNIT
            mujoco.mj_step(env.model, sim, nstep=env.n_substeps)
            poses[k] = block_pose_from_qpos(sim.qpos)
        return poses

    def _route_lengths(self, start: np.ndarray, goals: np.ndarray, pose: np.ndarray):
        """Shortest collision-free route lengths start -> each goal round the T.

        Returns ``via`` (n, G) route lengths through each last waypoint (inf where
        blocked), the waypoints (n, 2; 0 = start) and their next-hop table (n, n).
        """
        nodes = tee_to_world(pose, self._hull_nodes)
        inside = np.all((nodes >= 0.0) & (nodes <= WORKSPACE), axis=1)
        via, pts, _, nxt = self._route_graph(pose, start, nodes[inside], goals)
        return via, pts, nxt

    def _plan(self, i: int, row: _Row, pusher: np.ndarray, pose: np.ndarray) -> np.ndarray:
        e0 = float(self._error(pose))
        speed = self.push_speed if e0 > 30.0 else (6.0 if e0 > 10.0 else 3.0)
        rot = rotation(pose[2])
        normals = NORMALS @ rot.T
        contacts = tee_to_world(pose, CONTACTS)
        prepush = contacts + normals * (PUSHER_RADIUS + self.standoff)
        valid = np.all((prepush >= 0.0) & (prepush <= WORKSPACE), axis=1)
        via, pts, nxt = self._route_lengths(pusher, prepush, pose)
        route_len = via.min(axis=0)
        valid &= np.isfinite(route_len)
        if not np.any(valid):
            # Boxed in (against a wall or in a pocket): back away from the T and retry.
            away = pusher - pose[:2]
            row.phase = "retreat"
            return pusher + 20.0 * away / max(np.linalg.norm(away), 1e-6)

        idx = np.flatnonzero(valid)
        poses = np.stack([self._simulate(i, prepush[c], -normals[c], speed) for c in idx])
        errors = self._error(poses)  # (C, K)
        # Steps to travel (approach settling included) + steps pushed.
        travel = np.ceil(route_len[idx] / self.travel_speed) + 1.0
        steps = travel[:, None] + np.arange(1, self.max_push_steps + 1)[None]
        score = (e0 - errors) / steps
        best = score.max()
        if best <= 0.0:
            # No straight push helps: take a random short push to shake things up.
            c, k = row.rng.integers(len(idx)), 1 + row.rng.integers(self.max_push_steps)
        else:
            near = np.argwhere(score >= best * (1.0 - self.tie_tolerance))
            c, k = near[row.rng.integers(len(near))]
            k += 1
        cand = idx[c]

        # Route: random among last waypoints whose route is within tolerance of the shortest.
        lengths = via[:, cand]
        options = np.flatnonzero(lengths <= lengths.min() * (1.0 + self.tie_tolerance) + 1.0)
        j = int(options[row.rng.integers(len(options))])
        row.path = np.array([*self._node_path(pts, nxt, j), prepush[cand]])
        row.prepush = prepush[cand]
        row.direction = -normals[cand]
        row.speed = speed
        row.push_steps = int(k)
        row.planned_pose = pose.copy()
        row.phase = "travel"
        row.pushes += 1
        if row.first_side is None:
            row.first_face = int(FACE_OF[cand])
            row.first_side = self._side(row.path, pose)
        if np.linalg.norm(pusher - row.prepush) < 2.5:
            row.phase, row.push_done = "push", 1
            return row.prepush + row.direction * row.speed
        return self._follow_path(row, pusher)

    @staticmethod
    def _side(path: np.ndarray, pose: np.ndarray) -> str:
        """Which way the route turns round the block: "ccw", "cw" or "direct".

        The sign of the angle the route sweeps about the T's centre of mass, in the env's
        (x, y) frame (on the y-down rendered image, "ccw" looks clockwise).
        """
        if len(path) <= 2:
            return "direct"
        com = tee_to_world(pose, np.array([[0.0, 45.0]]))[0]
        rel = path - com
        ang = np.arctan2(rel[:, 1], rel[:, 0])
        swept = np.sum(np.angle(np.exp(1j * np.diff(ang))))
        return "ccw" if swept > 0 else "cw"
