"""``robodistill/AGVMaze-v0``: a differential-drive AGV crossing a warehouse, sparse reward.

The warehouse-path-planning setting of the RND-for-AGV work: a 24 m x 12 m hall with five
shelf rows (1 m deep) across the direction of travel (``rows`` makes a shorter hall: 4 m of
hall per row plus 4 m, so ``rows=2`` is a 12 m x 12 m hall with two rows). Each row is broken by one or two
cross aisles (1.4 m wide) at seed-dependent places, alternating between the upper and lower
half from row to row so that the route zig-zags; a few pallets stand in the aisles. The
AGV starts in the loading zone (x in [0.8, 2.2] m) and must reach a goal in the dispatch
zone at the far end (x in [21.8, 23.2] m). Reward is 1 on reaching the goal, else 0, over
a 1000-step (100 s) horizon, so undirected exploration rarely finds it.

Observation, action, ``dt`` and ``info`` are those of :class:`robodistill.envs.nav.NavEnv`,
and so are its two options: ``layout_seed=k`` keeps one hall for every episode (the shelf
rows with their cross aisles, the pallets, the start pose and the goal that
``reset(seed=k)`` would draw), and ``privileged_position=True`` appends the AGV's world
position (x in [0, hall length], y in [0, 12] m) and heading (cos, sin) as the PRIVILEGED
layout entries ``position`` and ``heading``: the setting of the RND-for-AGV work, where the
exploration bonus sees where the AGV is and the policy need not.
"""

from __future__ import annotations

import numpy as np

from robodistill.envs.nav import NavEnv
from robodistill.envs.nav_grid import Layout

HALL_H = 12.0  # m
ROW_PITCH = 4.0  # m between shelf-row centre lines (and from each end wall to its row)
MAX_ROWS = 5
ROW_HALF_DEPTH = 0.5  # m
AISLE_W = 1.4  # m, width of a cross aisle through a shelf row
N_PALLETS = 3
MAX_SEGMENTS = 3  # a row with two cross aisles is three shelf boxes


class AGVMazeEnv(NavEnv):
    """Warehouse maze for a ``diffdrive`` AGV with a sparse goal reward.

    Args:
        embodiment: defaults to ``"diffdrive"`` (any ``EMBODIMENTS`` key works).
        reward: defaults to ``"sparse"``.
        rows: shelf rows between start and goal, 1 to 5 (default 5, the 24 m hall); fewer
            rows make a shorter hall, a smaller exploration problem at the same horizon.
        render_mode: ``None`` or ``"rgb_array"``.
        layout_seed: ``None`` (a new hall per episode seed) or an int ``>= 0`` (one fixed
            hall, start and goal for every episode); see :class:`NavEnv`.
        privileged_position: append the PRIVILEGED world-frame position and heading to the
            observation; see :class:`NavEnv`.
    """

    default_embodiment = "diffdrive"
    expert_heading_mode = "path"
    """The AGV task is about exploration under a sparse reward, not the embodiment gap: the
    planner expert faces its direction of travel here, so it drives the diff-drive AGV."""

    def __init__(
        self,
        embodiment: str | None = None,
        reward: str = "sparse",
        rows: int = MAX_ROWS,
        render_mode: str | None = None,
        layout_seed: int | None = None,
        privileged_position: bool = False,
    ):
        if not isinstance(rows, int) or not 1 <= rows <= MAX_ROWS:
            raise ValueError(f"AGVMaze rows must be an integer in [1, {MAX_ROWS}], got {rows!r}")
        self.rows = rows
        self.row_x = tuple(ROW_PITCH * (i + 1) for i in range(rows))
        self.hall_w = ROW_PITCH * (rows + 1)
        # Pallets stand between rows; a one-row hall has nowhere to put them.
        self.n_pallets = N_PALLETS if rows > 1 else 0
        super().__init__(
            embodiment,
            reward=reward,
            n_obstacles=0,
            render_mode=render_mode,
            layout_seed=layout_seed,
            privileged_position=privileged_position,
        )

    def _slot_counts(self) -> tuple[int, int]:
        return MAX_ROWS * MAX_SEGMENTS + N_PALLETS, 0

    def _floor_half_size(self) -> float:
        return 30.0

    def _arena_size(self) -> tuple[float, float]:
        return self.hall_w, HALL_H

    def _generate_layout(self, rng: np.random.Generator) -> Layout:
        while True:
            boxes = []
            for i, x in enumerate(self.row_x):
                # Main cross aisle alternates halves; a second one appears half the time.
                lo, hi = (HALL_H / 2 + 0.5, HALL_H - 1.2) if i % 2 == 0 else (1.2, HALL_H / 2 - 0.5)
                gaps = [rng.uniform(lo, hi)]
                if rng.random() < 0.5:
                    gaps.append(rng.uniform(1.2, HALL_H - 1.2))
                gaps = sorted(gaps)
                edges = [0.0]
                for g in gaps:
                    edges += [g - AISLE_W / 2, g + AISLE_W / 2]
                edges.append(HALL_H)
                for y0, y1 in zip(edges[::2], edges[1::2], strict=True):
                    if y1 - y0 > 0.2:
                        boxes.append([x, (y0 + y1) / 2, ROW_HALF_DEPTH, (y1 - y0) / 2, 0.0])
            for _ in range(self.n_pallets):
                row = rng.integers(len(self.row_x) - 1)
                px = rng.uniform(self.row_x[row] + 1.3, self.row_x[row + 1] - 1.3)
                boxes.append([px, rng.uniform(1.0, HALL_H - 1.0), 0.4, 0.4, 0.0])
            layout = Layout(
                self.hall_w, HALL_H, np.array(boxes), np.zeros((0, 3)), np.zeros(3), np.zeros(2)
            )
            ok = self._place_start_goal(
                layout,
                rng,
                clearance=0.5,
                min_dist=0.75 * self.hall_w,
                start_zone=(0.8, 2.2),
                goal_zone=(self.hall_w - 2.2, self.hall_w - 0.8),
            )
            if ok:
                return layout
