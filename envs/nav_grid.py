"""A Nav arena as a planner sees it: the :class:`Layout` (room, obstacles, start, goal) and
its occupancy grid, with cell lookup and reachability."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

GRID_RES = 0.1  # m per occupancy cell


@dataclass
class Layout:
    """One arena: everything a planner needs, in metres and radians, origin at a corner.

    Attributes:
        width, height: room extent along x and y; walls sit just outside ``[0, width]``.
        boxes: (N, 5) ``[cx, cy, half_x, half_y, yaw]``.
        cylinders: (M, 3) ``[cx, cy, radius]``.
        start: (3,) ``[x, y, yaw]`` of the robot.
        goal: (2,) ``[x, y]``.
    """

    width: float
    height: float
    boxes: np.ndarray
    cylinders: np.ndarray
    start: np.ndarray
    goal: np.ndarray

    def copy(self) -> Layout:
        """A copy whose arrays are not shared with this one."""
        return replace(
            self,
            boxes=self.boxes.copy(),
            cylinders=self.cylinders.copy(),
            start=self.start.copy(),
            goal=self.goal.copy(),
        )


def occupancy_grid(layout: Layout, inflate: float, res: float = GRID_RES) -> np.ndarray:
    """Boolean grid (ny, nx), True where a disc of radius ``inflate`` m would hit something.

    Cell ``(i, j)`` has centre ``((j + 0.5) * res, (i + 0.5) * res)``. Inflated boxes keep
    square corners (slightly conservative).
    """
    nx, ny = int(np.ceil(layout.width / res)), int(np.ceil(layout.height / res))
    xs = (np.arange(nx) + 0.5) * res
    ys = (np.arange(ny) + 0.5) * res
    x, y = np.meshgrid(xs, ys)
    occ = (x < inflate) | (y < inflate) | (x > layout.width - inflate)
    occ |= y > layout.height - inflate
    for cx, cy, hx, hy, yaw in layout.boxes:
        c, s = np.cos(yaw), np.sin(yaw)
        u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
        occ |= (np.abs(u) <= hx + inflate) & (np.abs(v) <= hy + inflate)
    for cx, cy, r in layout.cylinders:
        occ |= (x - cx) ** 2 + (y - cy) ** 2 <= (r + inflate) ** 2
    return occ


def to_cell(p: np.ndarray, res: float = GRID_RES) -> tuple[int, int]:
    """(x, y) m -> (row, col) of the grid cell containing it."""
    return int(p[1] // res), int(p[0] // res)


def reachable(free: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether cell ``b`` can be reached from ``a`` through ``free`` cells (4-connected)."""
    if not (free[a] and free[b]):
        return False
    seen = np.zeros_like(free)
    seen[a] = True
    while True:
        grown = seen.copy()
        grown[1:] |= seen[:-1]
        grown[:-1] |= seen[1:]
        grown[:, 1:] |= seen[:, :-1]
        grown[:, :-1] |= seen[:, 1:]
        grown &= free
        if grown[b]:
            return True
        if np.array_equal(grown, seen):
            return False
        seen = grown
