r"""An imitable Push-T demonstrator: committed straight pushes on a smooth target path.

The pusher target (the env's action) follows one continuous, velocity- and
acceleration-limited path, planned whole at each decision and then played back one point
per control step (units, see :mod:`robodistill.envs.pusht`)::

      o start (the last target)               1. plan: for each of 24 contact points on
       \                                         the T's faces, simulate a straight push
        o hull node (route round the T)          along the face normal on a copy of the
         \                                       simulator state (MjData of the env's
          o run-up point                         model) and stop it where keypoint error
          |                                      is lowest; score each (contact, route) by
          v      |####### bar                    error removed per control step.
          o ---> |######  push straight to    2. travel round the T's inflated convex hull,
                 |         the committed end     run up along the push line, push through
                           point, stop, re-plan  to the end point, stop; plan again.

* **Velocity-limited, continuous target.** The path (route, run-up, push) gets a speed
  profile: at most ``travel_speed`` (15) units per step while travelling,
  ``push_speeds`` (12, 8 or 4 by keypoint error) on the run-up and the push, slower at
  corners, and speed changes of at most ``accel`` (5) units/step^2. The position
  actuators bring the pusher within ~2 units of each target by the end of the step, so
  the target is where the last two observed pusher positions point:
  ``a_t ~ p_t + (p_t - p_{t-1})``.
* **One committed plan per push, no random lengths.** The push stops where the simulated
  keypoint error is lowest (or just before the simulated pusher would jam), a
  deterministic function of the state at planning time.
* **No retreat jump.** The next plan starts from the last target with its current
  velocity; when that point is too close to the block the route begins with a short
  back-off along the block's outward normal, under the same speed limits. The one jump
  left: if the pusher ever ends a step more than 10 units from its target (stuck behind
  a block jammed against a wall, never seen in 300 seeded episodes), the target is taken
  back to the pusher and the expert plans from there.
* **Multimodal across seeds, deterministic per seed.** Each episode draws one handedness,
  counter-clockwise or clockwise, from ``(seed, env.episode_seed)``. Among (contact,
  route) options scoring within ``tie_tolerance`` of the best, the planner takes the best
  one that goes round the block that way (by the angle the route sweeps about the T's
  centre of mass), so the same start is walked round by either side depending on the
  seed, and an episode is a function of the env's seed alone.

Only numpy and mujoco: the module imports no torch itself (the ``robodistill.policies``
package that holds the ``Policy`` base class does, as for every expert).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from robodistill.envs.pusht import (
    PUSHER_RADIUS,
    TEE_COM,
    UNIT,
    WORKSPACE,
    block_pose_from_qpos,
    qpos_from_units,
    rotation,
    tee_distance,
    tee_to_world,
)
from robodistill.envs.pusht_expert import CONTACTS, FACE_OF, NORMALS, PrivilegedPushTExpert
from robodistill.policies.base import register_policy

_SIDES = ("ccw", "cw")
_JAM = 10.0
"""Pusher this far (units) from its target after a step is stuck: re-plan from where it is.
Free, it ends each step within ~2 units of the target."""
_DIRECT_SWEEP = 0.5
"""Routes sweeping less than this (radians) about the T's centre of mass count as direct."""


def sweep_angle(points: np.ndarray, centre: np.ndarray) -> float:
    """Signed angle (radians) a polyline (N, 2) sweeps about ``centre`` (x towards y: > 0)."""
    rel = points - centre
    ang = np.arctan2(rel[:, 1], rel[:, 0])
    return float(np.sum(np.angle(np.exp(1j * np.diff(ang)))))


def side_of(sweep: float) -> str:
    """Side of a route round the block from its swept angle: ``"ccw"``, ``"cw"`` or
    ``"direct"`` (in the env's x, y frame; on the y-down rendered image ccw looks clockwise).
    """
    if abs(sweep) < _DIRECT_SWEEP:
        return "direct"
    return "ccw" if sweep > 0 else "cw"


def speed_profile(
    path: np.ndarray, caps: np.ndarray, v0: np.ndarray, accel: float, ds: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Targets (T, 2), one per control step, moving along ``path`` (N, 2) from its start,
    and their arc lengths (T,) along it.

    ``caps`` (N - 1,) is the speed limit (units/step) on each segment; corners are capped
    by their turning angle, the start speed is that of the velocity ``v0`` (2,) along the
    first segment (none if it points back) and the end speed 0; speed changes by
    at most ``accel`` units/step^2 (forward/backward pass on an arc-length grid of ``ds``).
    The last target is exactly ``path[-1]``.
    """
    path = np.asarray(path, float)
    seg = np.diff(path, axis=0)
    lengths = np.linalg.norm(seg, axis=1)
    keep = lengths > 1e-9
    path = np.concatenate([path[:1], path[1:][keep]])
    seg, lengths, caps = seg[keep], lengths[keep], np.asarray(caps, float)[keep]
    if len(seg) == 0:
        return path[-1:].copy(), np.zeros(1)
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    n = max(int(np.ceil(cum[-1] / ds)), 1)
    s = np.linspace(0.0, cum[-1], n + 1)
    which = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
    vmax = caps[which]
    # Corners: slow down with the turning angle (a U-turn stops).
    unit = seg / lengths[:, None]
    for i in range(1, len(seg)):
        cos_turn = float(np.clip(unit[i - 1] @ unit[i], -1.0, 1.0))
        corner = max(min(caps[i - 1], caps[i]) * (0.5 + 0.5 * cos_turn) ** 2, 1.0)
        at = np.argmin(np.abs(s - cum[i]))
        vmax[at] = min(vmax[at], corner)
    vmax[0] = min(vmax[0], max(float(np.asarray(v0) @ unit[0]), 0.0))
    vmax[-1] = 0.0
    step = s[1] - s[0]
    v = vmax.copy()
    for i in range(n - 1, -1, -1):  # backward: able to brake for what comes
        v[i] = min(v[i], np.sqrt(v[i + 1] ** 2 + 2.0 * accel * step))
    for i in range(1, n + 1):  # forward: able to accelerate
        v[i] = min(v[i], np.sqrt(v[i - 1] ** 2 + 2.0 * accel * step))
    mean_v = np.maximum(0.5 * (v[1:] + v[:-1]), 0.05)
    t = np.concatenate([[0.0], np.cumsum(step / mean_v)])
    steps = max(int(np.ceil(t[-1] - 1e-6)), 1)
    s_at = np.interp(np.arange(1, steps + 1, dtype=float), t, s)
    s_at[-1] = cum[-1]
    k = np.clip(np.searchsorted(cum, s_at, side="right") - 1, 0, len(seg) - 1)
    return path[k] + unit[k] * (s_at - cum[k])[:, None], s_at


@dataclass
class _Row:
    """Per-batch-row episode state."""

    handedness: str  # "ccw" | "cw": the route side preferred among near-ties
    marker: int = -1  # env.num_resets when this row's state was made
    target: np.ndarray | None = None  # last commanded target, units
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # its last step
    traj: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    idx: int = 0
    contact_at: int = 0  # trajectory index where the run-up (block may move) starts
    planned_pose: np.ndarray = field(default_factory=lambda: np.zeros(3))
    first_side: str | None = None
    first_face: int | None = None
    pushes: int = 0
    replans: int = 0  # plans redone because the block moved while travelling
    stuck: int = 0  # plans with no route (backed away) or no helpful push
    jams: int = 0  # times the pusher got stuck behind its target


@register_policy
class PushTSmoothExpert(PrivilegedPushTExpert):
    """Smooth privileged push planner for ``robodistill/PushT-v0`` (reads the MuJoCo state).

    Args:
        seed: mixed with each episode's ``env.episode_seed`` to draw the episode's handedness.
        travel_speed: top target speed while travelling round the block, units/step.
        accel: largest change of target speed per step, units/step^2.
        clearance: extra clearance kept from the T while travelling, units.
        horizon: longest push simulated per candidate, control steps.
        tie_tolerance: options scoring within this fraction of the best are equivalent.
        push_speeds: run-up and push speed, units/step, when the keypoint error is above
            30, above 10, and at most 10 units.

    ``act(obs)`` ignores ``obs`` beyond its batch size and returns (B, 2) float32 actions in
    [-1, 1] (the env's absolute pusher target).
    """

    kind = "expert/pusht-smooth"
    info_fields = ("handedness", "first_side", "first_face", "pushes", "replans", "stuck", "jams")

    def __init__(
        self,
        seed: int = 0,
        travel_speed: float = 15.0,
        accel: float = 5.0,
        clearance: float = 5.0,
        horizon: int = 16,
        tie_tolerance: float = 0.15,
        push_speeds: tuple[float, float, float] = (12.0, 8.0, 4.0),
    ):
        super().__init__(seed, clearance, tie_tolerance)
        self.travel_speed = float(travel_speed)
        self.accel = float(accel)
        self.horizon = int(horizon)
        self.push_speeds = tuple(float(v) for v in push_speeds)

    # ------------------------------------------------------------------------ internals
    def _new_row(self, i: int) -> _Row:
        handedness = _SIDES[int(self._episode_rng(i).integers(2))]
        return _Row(handedness=handedness, marker=self._episode_marker(i))

    def _act_row(self, i: int) -> np.ndarray:
        env, row = self.envs[i], self._row(i)  # a reset without our reset(): new episode
        pusher = env.pusher_position()
        if row.target is None:
            row.target = pusher.copy()
        if np.linalg.norm(pusher - row.target) > _JAM:
            # The pusher is stuck (block jammed against a wall): take the target back to
            # it, the one jump this expert makes, and plan from there.
            row.jams += 1
            row.target, row.velocity = pusher.copy(), np.zeros(2)
            self._plan(i, row)
        elif row.idx < len(row.traj):
            moved = np.abs(env.block_pose() - row.planned_pose) > (1.0, 1.0, 0.01)
            if row.idx < row.contact_at and np.any(moved):
                row.replans += 1  # we nudged the block while travelling: plan afresh
                self._plan(i, row)
        else:
            self._plan(i, row)
        target = row.traj[row.idx]
        row.idx += 1
        row.velocity = target - row.target
        row.target = target
        return target

    def _simulate(self, i: int, start: np.ndarray, direction: np.ndarray, speed: float):
        """Block poses (K, 3) and pusher positions (K, 2) after each step of a straight push
        that starts at ``start`` already moving at ``speed`` units/step; it stops early past
        the lowest keypoint error or before the pusher jams (K may be 0)."""
        env, sim = self.envs[i], self._sims[i]
        sim.qpos[:] = qpos_from_units(start, env.block_pose())
        sim.qvel[:] = 0.0
        sim.qvel[0:2] = direction * speed * UNIT / env.dt
        poses = np.empty((self.horizon, 3))
        pushers = np.empty((self.horizon, 2))
        best, best_k = np.inf, 0
        for k in range(self.horizon):
            sim.ctrl[:] = (start + direction * speed * (k + 1)) * UNIT
            mujoco.mj_step(env.model, sim, nstep=env.n_substeps)
            poses[k] = block_pose_from_qpos(sim.qpos)
            pushers[k] = sim.qpos[0:2] / UNIT
            if np.linalg.norm(pushers[k] - sim.ctrl / UNIT) > 0.6 * _JAM:
                return poses[:k], pushers[:k]  # jammed: only the steps before count
            err = float(self._error(poses[k]))
            if err < best - 1e-3:
                best, best_k = err, k
            elif k - best_k >= 3 and err > best + 1.0:
                return poses[: k + 1], pushers[: k + 1]  # past the best: stop simulating
        return poses, pushers

    def _routes(self, pose: np.ndarray, start: np.ndarray, goals: np.ndarray):
        """Collision-free routes ``start`` -> each goal round the T's inflated convex hull.

        Returns ``via`` (n, G) route lengths through each last node (inf where blocked),
        the node points (n, 2; 0 = start), and for each node its shortest path from the
        start (list of (m, 2) arrays, None where unreachable).
        """
        nodes = tee_to_world(pose, self._hull_nodes)
        margin = PUSHER_RADIUS + 2.0
        nodes = nodes[np.all((nodes >= margin) & (nodes <= WORKSPACE - margin), axis=1)]
        via, pts, dist, nxt = self._route_graph(pose, start, nodes, goals)
        paths = [
            self._node_path(pts, nxt, j) if np.isfinite(dist[0, j]) else None
            for j in range(len(pts))
        ]
        return via, pts, paths

    def _back_off(self, pose: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Where to step to first so the route starts clear of the T (``start`` if it is)."""
        gap = float(tee_distance(pose, start))
        need = PUSHER_RADIUS + self.clearance
        if gap >= need:
            return start
        eps = 0.5
        grad = np.array(
            [
                tee_distance(pose, start + (eps, 0.0)) - tee_distance(pose, start - (eps, 0.0)),
                tee_distance(pose, start + (0.0, eps)) - tee_distance(pose, start - (0.0, eps)),
            ]
        )
        if np.linalg.norm(grad) < 1e-6:  # inside the T's outline: leave from its centre
            grad = start - tee_to_world(pose, TEE_COM[None])[0]
        out = start + grad / max(np.linalg.norm(grad), 1e-9) * (need + 1.0 - gap)
        return np.clip(out, PUSHER_RADIUS, WORKSPACE - PUSHER_RADIUS)

    def _plan(self, i: int, row: _Row) -> None:
        env = self.envs[i]
        pose = env.block_pose()
        start = row.target.copy()
        v0 = row.velocity
        e0 = float(self._error(pose))
        fast, mid, slow = self.push_speeds
        push_speed = fast if e0 > 30.0 else (mid if e0 > 10.0 else slow)
        run_up = max(10.0, 2.0 * push_speed)
        normals = NORMALS @ rotation(pose[2]).T
        contacts = tee_to_world(pose, CONTACTS)
        runup_pts = contacts + normals * (PUSHER_RADIUS + run_up)
        first = self._back_off(pose, start)
        head = [start] if first is start else [start, first]
        valid = np.all(
            (runup_pts >= PUSHER_RADIUS + 2.0) & (runup_pts <= WORKSPACE - PUSHER_RADIUS - 2.0),
            axis=1,
        )
        via, pts, paths = self._routes(pose, first, runup_pts)
        via[:, ~valid] = np.inf
        cands = np.flatnonzero(np.isfinite(via).any(axis=0))
        self._reset_traj(row, pose)
        # Simulate each candidate's push; stop it where keypoint error is lowest.
        com = tee_to_world(pose, TEE_COM[None])[0]
        gains, push_steps, ends = {}, {}, {}
        for c in cands:
            d = -normals[c]
            poses, pushers = self._simulate(i, runup_pts[c], d, push_speed)
            if len(poses) == 0:
                continue
            errs = self._error(poses)
            k = int(np.argmin(errs))
            gains[c], push_steps[c] = e0 - errs[k], k + 1
            ends[c] = runup_pts[c] + d * max((pushers[k] - runup_pts[c]) @ d, 0.0)
        cands = [c for c in cands if c in gains]
        if not cands:  # boxed in (wall or pocket): back away from the T, re-plan
            row.stuck += 1
            away = first - tee_to_world(pose, TEE_COM[None])[0]
            away = first + 25.0 * away / max(np.linalg.norm(away), 1e-6)
            path = np.array([*head, np.clip(away, PUSHER_RADIUS, WORKSPACE - PUSHER_RADIUS)])
            row.traj, _ = speed_profile(path, np.full(len(path) - 1, 6.0), v0, self.accel)
            row.contact_at = len(row.traj)
            return
        # Options: (candidate, last route node), each with its side round the block.
        options = []
        extra = len(head) - 1 + run_up / push_speed + self.travel_speed / self.accel
        for c in cands:
            for j in np.flatnonzero(np.isfinite(via[:, c])):
                steps = via[j, c] / self.travel_speed + extra + push_steps[c]
                route = np.array([*head[:-1], *paths[j], runup_pts[c], contacts[c]])
                options.append((gains[c] / steps, side_of(sweep_angle(route, com)), c, j))
        best = max(o[0] for o in options)
        if best > 0.0:
            near = [o for o in options if o[0] >= best * (1.0 - self.tie_tolerance)]
            mine = [o for o in near if o[1] == row.handedness]
            score, side, c, j = max(mine or near, key=lambda o: o[0])
        else:  # no straight push helps: take the least harmful one, all the same
            row.stuck += 1
            score, side, c, j = max(options, key=lambda o: gains[o[2]])
        path = np.array([*head[:-1], *paths[j], runup_pts[c], ends[c]])
        caps = np.full(len(path) - 1, self.travel_speed)
        caps[-1] = push_speed
        row.traj, arc = speed_profile(path, caps, v0, self.accel)
        # The block may start to move once the target is on the run-up.
        runup_at = np.sum(np.linalg.norm(np.diff(path[:-1], axis=0), axis=1)) - 1e-6
        row.contact_at = int(np.argmax(arc >= runup_at))
        row.pushes += 1
        if row.first_side is None:
            row.first_side, row.first_face = side, int(FACE_OF[c])

    @staticmethod
    def _reset_traj(row: _Row, pose: np.ndarray) -> None:
        row.idx, row.contact_at, row.planned_pose = 0, 0, pose.copy()
