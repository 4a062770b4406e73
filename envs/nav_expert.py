"""A privileged planner expert for ``Nav-v0`` / ``AGVMaze-v0``: A* + pure pursuit.

It reads the layout and the robot pose from each attached environment (``env.unwrapped``),
plans with A* on an occupancy grid inflated by the *holonomic* footprint, and follows the
path issuing ``(vx, vy, yaw_rate)`` as a controller written for an omni base does: the
translation is a body-frame ``(vx, vy)`` toward a lookahead point on the path, and heading
is a separate, slow loop (``heading_mode``):

``"goal"``
    turn slowly (at most ``max_heading_rate``) toward the straight-line bearing of the goal;
    the robot strafes along the path and does not face its direction of travel.
``"hold"``
    keep the heading the episode started with (yaw rate 0).
``"path"``
    face the direction of travel (turn toward the lookahead point at full rate), the way
    a differential-drive follower would; a non-holonomic base can then follow the path.
``"auto"`` (default)
    ask the environment: its ``expert_heading_mode`` attribute (``"goal"`` on ``Nav-v0``,
    ``"path"`` on ``AGVMaze-v0``, whose point is exploration, not the embodiment gap),
    ``"goal"`` if it has none.

Normalized commands assume the holonomic limits and footprint. On other embodiments the
same numbers pass through different limits and constraints: ``vy`` is dropped and the
slow heading loop never lines a ``diffdrive`` / ``ackermann`` body up with the path, a
``heavy`` body accelerates slowly and does not fit through every gap the holonomic plan
uses. That gap is what a residual (COMPASS-style) specialist is meant to close.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from robodistill.envs.embodiments import EMBODIMENTS, N_RAYS
from robodistill.envs.nav_grid import GRID_RES, occupancy_grid
from robodistill.policies.base import Policy, register_policy

_HOLO = EMBODIMENTS["holonomic"]
_SQRT2 = float(np.sqrt(2.0))
HEADING_MODES = ("auto", "goal", "hold", "path")


def astar(cost: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Cheapest 8-connected path on ``cost`` (ny, nx), ``inf`` = blocked; [] if none.

    A step costs its length (cells) times the mean cost of the two cells; the octile
    heuristic is admissible because every cell costs at least 1.
    """
    ny, nx = cost.shape
    flat = cost.ravel()
    s, g = start[0] * nx + start[1], goal[0] * nx + goal[1]
    gr, gc = goal
    best = {s: 0.0}
    parent = {s: -1}
    heap = [(0.0, s)]
    moves = [(dr, dc, _SQRT2 if dr and dc else 1.0) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    moves.remove((0, 0, 1.0))
    while heap:
        _, u = heapq.heappop(heap)
        if u == g:
            path = []
            while u != -1:
                path.append(divmod(u, nx))
                u = parent[u]
            return path[::-1]
        r, c = divmod(u, nx)
        gu = best[u]
        for dr, dc, length in moves:
            rr, cc = r + dr, c + dc
            if not (0 <= rr < ny and 0 <= cc < nx):
                continue
            v = rr * nx + cc
            cv = flat[v]
            if cv == np.inf:
                continue
            new = gu + length * 0.5 * (flat[u] + cv)
            if new < best.get(v, np.inf):
                best[v] = new
                parent[v] = u
                dy, dx = abs(rr - gr), abs(cc - gc)
                h = (dx + dy) + (_SQRT2 - 2) * min(dx, dy)
                heapq.heappush(heap, (new + h, v))
    return []


@dataclass
class _Row:
    episode: int = -1
    path: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    progress: int = 0
    history: list = field(default_factory=list)
    yaw0: float = 0.0
    backoff: int = 0
    replans: int = 0


@register_policy
class NavPlannerExpert(Policy):
    """A* on the known layout + pure-pursuit follower, tuned for the holonomic base.

    Args:
        lookahead: pure-pursuit lookahead distance, m.
        margin: extra inflation beyond the holonomic footprint radius, m.
        speed: cruise speed, m/s (as a fraction of the holonomic limit once normalized).
        stuck_steps: steps with < 0.1 m of motion before backing off and re-planning.
        heading_mode: ``"auto"``, ``"goal"``, ``"hold"`` or ``"path"`` (module docstring).
        max_heading_rate: yaw-rate cap of the slow ``"goal"`` heading loop, rad/s.
        soft_band, soft_cost: cells within ``soft_band`` m of the inflated obstacles cost
            ``soft_cost`` (free cells cost 1), so paths keep to the middle of wide gaps.

    ``act(obs)`` takes (B, 27) observations and returns (B, 3) float32 in [-1, 1]; it
    needs ``attach(envs)`` first (envs in batch-row order).
    """

    kind = "expert/nav"

    def __init__(
        self,
        lookahead: float = 0.6,
        margin: float = 0.1,
        speed: float = 1.0,
        stuck_steps: int = 15,
        heading_mode: str = "auto",
        max_heading_rate: float = 0.3,
        soft_band: float = 0.2,
        soft_cost: float = 2.0,
    ):
        if heading_mode not in HEADING_MODES:
            raise ValueError(f"heading_mode must be one of {HEADING_MODES}, got {heading_mode!r}")
        self.lookahead = lookahead
        self.margin = margin
        self.speed = speed
        self.stuck_steps = stuck_steps
        self.heading_mode = heading_mode
        self.soft_band = soft_band
        self.soft_cost = soft_cost
        self.max_heading_rate = max_heading_rate
        self.envs: list = []
        self.rows: list[_Row] = []
        self.modes: list[str] = []

    def attach(self, envs: list) -> None:
        self.envs = [e.unwrapped for e in envs]
        self.rows = [_Row() for _ in self.envs]
        self.modes = [self._resolve_mode(e) for e in self.envs]

    def _resolve_mode(self, env) -> str:
        if self.heading_mode != "auto":
            return self.heading_mode
        mode = getattr(env, "expert_heading_mode", "goal")
        return mode if mode in HEADING_MODES[1:] else "goal"

    def reset(self, env_ids=None) -> None:
        ids = range(len(self.rows)) if env_ids is None else env_ids
        for i in ids:
            self.rows[int(i)] = _Row()

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32).reshape(len(self.envs) or 1, -1)
        if not self.envs:
            raise RuntimeError("NavPlannerExpert needs attach(envs) before act()")
        if obs.shape[0] != len(self.envs):
            raise ValueError(f"got {obs.shape[0]} observations for {len(self.envs)} envs")
        out = np.zeros((len(self.envs), 3), dtype=np.float32)
        for b, env in enumerate(self.envs):
            out[b] = self._act_row(b, env, obs[b])
        return out

    # --- planning ------------------------------------------------------------------------
    def _plan(self, env, row: _Row, pose: np.ndarray) -> None:
        layout = env.layout
        inflate = _HOLO.footprint_radius + self.margin
        hard = occupancy_grid(layout, inflate)
        # Cells near obstacles cost more, so paths keep to the middle of gaps when they can.
        soft = occupancy_grid(layout, inflate + self.soft_band)
        cost = np.where(hard, np.inf, np.where(soft, self.soft_cost, 1.0))
        start = self._snap(~hard, pose[:2])
        goal = self._snap(~hard, layout.goal)
        cells = astar(cost, start, goal)
        if cells:
            path = (np.array(cells, dtype=np.float64)[:, ::-1] + 0.5) * GRID_RES
            path[-1] = layout.goal
        else:  # no route for the holonomic footprint: aim straight at the goal
            path = np.array([layout.goal], dtype=np.float64)
        row.path, row.progress = path, 0

    @staticmethod
    def _snap(free: np.ndarray, p: np.ndarray) -> tuple[int, int]:
        r = min(max(int(p[1] // GRID_RES), 0), free.shape[0] - 1)
        c = min(max(int(p[0] // GRID_RES), 0), free.shape[1] - 1)
        if free[r, c]:
            return r, c
        cells = np.argwhere(free)
        i = np.argmin((cells[:, 0] - r) ** 2 + (cells[:, 1] - c) ** 2)
        return int(cells[i, 0]), int(cells[i, 1])

    # --- following -----------------------------------------------------------------------
    def _act_row(self, b: int, env, obs: np.ndarray) -> np.ndarray:
        row = self.rows[b]
        pose = env.robot_pose()
        if row.episode != env.episode_count:  # new episode (also catches vector autoreset)
            self.rows[b] = row = _Row(episode=env.episode_count, yaw0=float(pose[2]))
            self._plan(env, row, pose)
        row.history.append(pose[:2].copy())
        del row.history[: -self.stuck_steps - 1]
        if row.backoff > 0:
            row.backoff -= 1
            if row.backoff == 0:
                self._plan(env, row, pose)
                row.history.clear()
            return self._backoff(obs)
        if (
            len(row.history) > self.stuck_steps
            and np.hypot(*(row.history[-1] - row.history[0])) < 0.1
        ):
            row.backoff, row.replans = 5, row.replans + 1
            return self._backoff(obs)
        return self._pursue(row, pose, env.layout.goal, self.modes[b])

    def _pursue(self, row: _Row, pose: np.ndarray, goal: np.ndarray, mode: str) -> np.ndarray:
        path, pos = row.path, pose[:2]
        window = path[row.progress : row.progress + 30]
        near = row.progress + int(np.argmin(np.hypot(*(window - pos).T)))
        row.progress = near
        ahead = np.hypot(*(path[near:] - pos).T) >= self.lookahead
        target = path[near + int(np.argmax(ahead))] if ahead.any() else path[-1]
        delta = target - pos
        dist_goal = float(np.hypot(*(goal - pos)))
        speed = min(self.speed, 0.2 + 0.8 * dist_goal, _HOLO.max_vx)
        v_world = speed * delta / max(float(np.hypot(*delta)), 1e-6)
        c, s = np.cos(pose[2]), np.sin(pose[2])
        v_body = np.array([c * v_world[0] + s * v_world[1], -s * v_world[0] + c * v_world[1]])
        if mode == "path":  # face the direction of travel, full rate
            heading, gain, cap = np.arctan2(delta[1], delta[0]), 2.0, _HOLO.max_yaw_rate
        elif mode == "goal":  # slowly face the goal; translation does not wait for it
            to_goal = goal - pos
            heading, gain, cap = np.arctan2(to_goal[1], to_goal[0]), 0.5, self.max_heading_rate
            if dist_goal < 0.5:  # the bearing swings wildly next to the goal: leave it be
                heading = pose[2]
        else:  # "hold"
            heading, gain, cap = row.yaw0, 1.0, self.max_heading_rate
        yaw_err = (heading - pose[2] + np.pi) % (2 * np.pi) - np.pi
        yaw_rate = np.clip(gain * yaw_err, -cap, cap)
        action = np.array(
            [v_body[0] / _HOLO.max_vx, v_body[1] / _HOLO.max_vy, yaw_rate / _HOLO.max_yaw_rate]
        )
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    @staticmethod
    def _backoff(obs: np.ndarray) -> np.ndarray:
        # Move away from the closest beam's obstacle (holonomic-style: in the body frame).
        ranges = obs[3 : 3 + N_RAYS]
        angle = 2 * np.pi * int(np.argmin(ranges)) / N_RAYS + np.pi
        return np.array([0.5 * np.cos(angle), 0.5 * np.sin(angle), 0.0], dtype=np.float32)
