"""Barycentric interpolation of vertex attributes and compositing of rendered images."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from facerecon.render.rasterizer import MAX_PAIRS, Fragments, _gather_planes, _pixel_vertices, rasterize

__all__ = ["RenderOutput", "interpolate", "render"]


@dataclass
class RenderOutput:
    """Rendered images (B = batch, H x W).

    Convention: channels-first images, 0-based pixel centres; depth in screen units (larger = farther).

    Attributes:
        image: (B, 3, H, W) interpolated vertex colours over the background (0 where neither).
        mask: (B, 1, H, W) float, 1 where a triangle covers the pixel centre.
        depth: (B, 1, H, W) depth of the visible surface, 0 for background (use ``mask``).
        normals: (B, 3, H, W) unit interpolated normals (0 for background), or None when no normals were given.
        fragments: the :class:`~facerecon.render.rasterizer.Fragments`.
    """

    image: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    normals: torch.Tensor | None
    fragments: Fragments


def interpolate(attributes: torch.Tensor, faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Interpolate per-vertex attributes at the pixel centres with the fragments' barycentrics.

    Args:
        attributes: (B, N, C) per-vertex attributes.
        faces: (F, 3) int64 vertex indices (those used for rasterisation).
        fragments: from :func:`~facerecon.render.rasterizer.rasterize` for the same batch.

    Returns:
        (B, H, W, C) ``sum_k bary_k * attributes[faces[face_index, k]]``, 0 for background; differentiable w.r.t.
        ``attributes`` and, through ``fragments.bary``, w.r.t. the screen vertex positions. (May be a permuted
        view of channel-first storage; call ``.contiguous()`` if needed.)

    Convention: vertex k of a face gets weight ``bary[..., k]``; background pixels have zero barycentrics.
    """
    return _interpolate_channels_first(attributes, faces, fragments).permute(1, 2, 3, 0)


def _interpolate_channels_first(attributes: torch.Tensor, faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """:func:`interpolate` with a (C, B, H, W) result."""
    b, n, c = attributes.shape
    fi = fragments.face_index
    _, h, w = fi.shape
    if fi.shape[0] != b:
        raise ValueError(f"attributes batch {b} != fragments batch {fi.shape[0]}")
    if faces.numel() == 0 or n == 0:
        return attributes.new_zeros(c, b, h, w)
    faces = faces.to(device=attributes.device, dtype=torch.long)
    bary = fragments.bary.to(attributes.dtype).permute(3, 0, 1, 2).reshape(3, b * h * w)  # free for our layout
    vidx = _pixel_vertices(faces, fi, n)
    if c <= 4:  # channel planes: contiguous 1-D gathers and arithmetic
        planes = _gather_planes(attributes, vidx)
        out = torch.stack([bary[0] * p[0] + bary[1] * p[1] + bary[2] * p[2] for p in planes])
    else:
        flat = attributes.reshape(b * n, c)
        out = sum(bary[k, :, None] * flat.index_select(0, vidx[k]) for k in range(3)).T
    return out.reshape(c, b, h, w)


def render(
    screen: torch.Tensor,
    faces: torch.Tensor,
    colors: torch.Tensor,
    height: int,
    width: int,
    background: torch.Tensor | None = None,
    normals: torch.Tensor | None = None,
    cull_backfaces: bool = False,
    max_pairs: int = MAX_PAIRS,
) -> RenderOutput:
    """Rasterise meshes and interpolate per-vertex colours (Gouraud; lighting belongs in ``colors``).

    Args:
        screen: (B, N, 3) screen-space vertices (pixel x, y; depth z, larger = farther), see
            :func:`~facerecon.render.rasterizer.to_screen`.
        faces: (F, 3) int64 vertex indices.
        colors: (B, N, 3) per-vertex RGB (e.g. ``albedo * sh_shading(normals, coeffs)``).
        height: image height H.
        width: image width W.
        background: optional (B, 3, H, W) image shown where no triangle is; black (0) when None.
        normals: optional (B, N, 3) vertex normals to interpolate (e.g. view-frame normals).
        cull_backfaces: see :func:`~facerecon.render.rasterizer.rasterize`.
        max_pairs: see :func:`~facerecon.render.rasterizer.rasterize`.

    Returns:
        :class:`RenderOutput`; ``image`` is differentiable w.r.t. ``colors``, ``background`` and (with visibility
        held fixed) ``screen``.

    Convention: 0-based pixel centres; hard (non-antialiased) coverage of pixel centres; channels-first output.
    """
    fragments = rasterize(screen, faces, height, width, cull_backfaces=cull_backfaces, max_pairs=max_pairs)
    mask = fragments.mask[:, None].to(colors.dtype)
    image = _interpolate_channels_first(colors, faces, fragments).transpose(0, 1)
    if background is not None:
        image = image + background * (1.0 - mask)
    depth = torch.where(fragments.mask, fragments.depth, torch.zeros_like(fragments.depth))[:, None]
    normal_image = None
    if normals is not None:
        n_cf = _interpolate_channels_first(normals, faces, fragments)
        normal_image = (n_cf / torch.sqrt((n_cf * n_cf).sum(0, keepdim=True).clamp_min(1e-24))).transpose(0, 1)
    return RenderOutput(image=image, mask=mask, depth=depth, normals=normal_image, fragments=fragments)
