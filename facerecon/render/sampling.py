"""Cheap image <-> mesh correspondence: per-vertex visibility from a z-buffer, and bilinear image sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

from facerecon.render.rasterizer import Fragments

__all__ = ["sample_image", "vertex_visibility"]


def vertex_visibility(
    screen: torch.Tensor,
    faces: torch.Tensor,
    fragments: Fragments,
    normals: torch.Tensor | None = None,
    tol: float = 1.0,
) -> torch.Tensor:
    """Which vertices are seen by the camera.

    A vertex is visible when its rounded pixel is inside the image and it is not occluded there: the pixel is
    background, or its winning triangle uses the vertex, or the vertex depth is at most ``tol`` behind that
    triangle's plane evaluated at the vertex's exact (x, y). With ``normals``, it must also face the camera
    (``n_z > 0`` in the view frame).

    Args:
        screen: (B, N, 3) the screen vertices that were rasterised.
        faces: (F, 3) int64 vertex indices.
        fragments: the rasterisation of ``screen``.
        normals: optional (B, N, 3) unit vertex normals in the VIEW frame (+y up, +z towards the camera).
        tol: depth tolerance in screen depth units (pixels for :func:`~facerecon.render.rasterizer.to_screen`).

    Returns:
        (B, N) bool.

    Convention: screen x, y with 0-based pixel centres (vertex at (x, y) -> pixel (round(x), round(y))); depth
    larger = farther. Not differentiable.
    """
    with torch.no_grad():
        b, n, _ = screen.shape
        fi = fragments.face_index
        _, h, w = fi.shape
        faces = faces.to(device=screen.device, dtype=torch.long)
        v = screen.detach()
        col = torch.round(v[..., 0])
        row = torch.round(v[..., 1])
        inside = (col >= 0) & (col <= w - 1) & (row >= 0) & (row <= h - 1) & torch.isfinite(v).all(-1)
        pix = torch.where(inside, row * w + col, torch.zeros_like(col)).long()
        face = fi.reshape(b, h * w).gather(1, pix)  # (B, N)
        covered = face >= 0
        if faces.numel() == 0:
            covered = torch.zeros_like(covered)
            faces = torch.zeros(1, 3, dtype=torch.long, device=screen.device)
        fv = faces[face.clamp_min(0)]  # (B, N, 3)
        own = (fv == torch.arange(n, device=screen.device)[None, :, None]).any(-1)
        tri = v.gather(1, fv.reshape(b, n * 3, 1).expand(b, n * 3, 3)).reshape(b, n, 3, 3)
        x = tri[..., 0] - v[..., 0, None]
        y = tri[..., 1] - v[..., 1, None]
        x1, x2 = x.roll(-1, dims=-1), x.roll(-2, dims=-1)
        y1, y2 = y.roll(-1, dims=-1), y.roll(-2, dims=-1)
        sub = x1 * y2 - y1 * x2
        total = sub.sum(-1)
        safe = torch.where(total != 0, total, torch.ones_like(total))
        surface_z = (sub * tri[..., 2]).sum(-1) / safe
        unoccluded = (~covered) | own | (v[..., 2] - surface_z <= tol)
        visible = inside & unoccluded
        if normals is not None:
            visible = visible & (normals[..., 2] > 0)
        return visible


def sample_image(image: torch.Tensor, points: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinearly sample an image at pixel coordinates.

    Args:
        image: (B, C, H, W) image (C = 3 for RGB).
        points: (B, N, 2) pixel coordinates (x, y).
        padding_mode: ``grid_sample`` padding for points outside the image ("zeros", "border" or "reflection").

    Returns:
        (B, N, C) sampled values; exact pixel values at integer pixel centres. Differentiable w.r.t. both inputs.

    Convention: 0-based pixel centres (pixel (i, j) centred at x=i, y=j), x right, y down; implemented with
    ``grid_sample(align_corners=False)`` on ``x_norm = (2x + 1) / W - 1``.
    """
    _, _, h, w = image.shape
    size = torch.tensor([w, h], device=points.device, dtype=points.dtype)
    grid = (2.0 * points + 1.0) / size - 1.0
    out = nnf.grid_sample(image, grid[:, None].to(image.dtype), mode="bilinear", padding_mode=padding_mode,
                          align_corners=False)
    return out[:, :, 0].transpose(1, 2)
