"""Pure-PyTorch, CPU-first triangle renderer: z-buffer rasterisation, interpolation, visibility and sampling.

Screen space: x, y in pixels with 0-based pixel centres (pixel (i, j) centred at x=i, y=j; x right, y down) and
z a depth with LARGER = FARTHER, e.g. :func:`to_screen` of the weak-perspective camera frame
(``xy = s * X_cam[..., :2] + c``, ``z = s * X_cam[..., 2]``).
"""

from __future__ import annotations

from facerecon.render.rasterizer import Fragments, rasterize, to_screen
from facerecon.render.renderer import RenderOutput, interpolate, render
from facerecon.render.sampling import sample_image, vertex_visibility

__all__ = [
    "Fragments",
    "RenderOutput",
    "interpolate",
    "rasterize",
    "render",
    "sample_image",
    "to_screen",
    "vertex_visibility",
]
