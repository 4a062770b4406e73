"""Episode videos: MP4 through imageio's ffmpeg plugin, GIF when ffmpeg is unavailable."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MIN_VIDEO_SIDE = 256
"""Frames whose shorter side is smaller are enlarged (nearest neighbour) to at least this."""


def write_video(path: str | Path, frames: list[np.ndarray], fps: float) -> Path:
    """Write ``frames`` (each ``(H, W, 3)`` uint8) to ``path``; returns the path written.

    Frames smaller than :data:`MIN_VIDEO_SIDE` are enlarged by a whole factor.
    ``.mp4`` needs the ``imageio-ffmpeg`` package; without it the video is written as
    ``.gif`` next to the requested path instead, and a warning says so.
    """
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    stack = np.stack(frames)
    if stack.dtype != np.uint8 or stack.ndim != 4 or stack.shape[-1] != 3:
        raise ValueError(f"frames must be (H, W, 3) uint8, got {stack.shape} {stack.dtype}")
    fps = float(fps or 30.0)
    # Policy-sized frames (PushT renders 96 px) are unwatchable; scale up by a whole factor.
    factor = -(-MIN_VIDEO_SIDE // min(stack.shape[1:3]))
    if factor > 1:
        stack = stack.repeat(factor, axis=1).repeat(factor, axis=2)
    if path.suffix == ".mp4":
        # H.264 in yuv420p (playable everywhere) needs even frame sizes.
        h, w = stack.shape[1] // 2 * 2, stack.shape[2] // 2 * 2
        try:
            iio.imwrite(path, stack[:, :h, :w], fps=fps, plugin="FFMPEG", macro_block_size=1)
            return path
        except Exception as e:  # noqa: BLE001 - a missing ffmpeg backend has many faces
            log.warning("cannot write MP4 (%s); writing a GIF instead", str(e).splitlines()[0])
            path.unlink(missing_ok=True)
            path = path.with_suffix(".gif")
    iio.imwrite(path, stack, duration=1000.0 / fps, loop=0)
    return path
