"""Vectorised z-buffer triangle rasterisation in pure PyTorch (CPU-first, device-agnostic).

Screen space: ``x``, ``y`` in pixels with 0-based pixel centres (pixel (i, j), column i and row j, is centred at
(x=i, y=j), x right, y down) and ``z`` a depth where LARGER is FARTHER (for the weak-perspective camera
``z = s * X_cam[..., 2]``, see :func:`to_screen`).

Coverage: a pixel is covered by a triangle when its centre lies inside it. Centres exactly on an edge follow a
top-left rule: the edge's pixel goes to the triangle on its +x side (on its +y side, i.e. below it, for horizontal
edges). Edge functions are evaluated in a canonical per-edge form (origin at the endpoint of lower vertex index), so
the two triangles sharing an edge compute exactly opposite values: a mesh is watertight (no holes, no pixel covered
twice by adjacent triangles) whatever the rounding. Both windings are rasterised (no culling unless asked for);
the nearest surface wins through the z-buffer.

Algorithm: per-triangle integer pixel bounding boxes clipped to the image, enumeration of all (triangle, pixel)
candidate pairs in bounded chunks, edge-function inside test, and a z-buffer by ``scatter_reduce('amin')`` on a
packed int64 key (order-preserving integer image of the float32 depth, then the face id). Visibility is not
differentiable; barycentrics and depth of each pixel's winning triangle are then recomputed with autograd from the
screen vertices, so they are differentiable with respect to ``screen``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Fragments", "rasterize", "to_screen"]

#: Default maximum number of candidate (triangle, pixel) pairs processed at once (peak temporary memory ~100 MB).
MAX_PAIRS = 1 << 19

_INT64_MAX = (1 << 63) - 1


@dataclass
class Fragments:
    """Per-pixel rasterisation result (B = batch, H x W image).

    Convention: 0-based pixel centres; ``face_index`` indexes the rows of ``faces`` (per batch item, not packed);
    depth in screen units, larger = farther.

    Attributes:
        face_index: (B, H, W) int64 index of the nearest triangle covering the pixel centre, -1 for background.
        bary: (B, H, W, 3) barycentric coordinates of the pixel centre in that triangle (weights of its vertices
            ``faces[f, 0..2]``, summing to 1), 0 for background; differentiable w.r.t. the screen vertices. From
            :func:`rasterize` it is a channel-first view (``bary.permute(3, 0, 1, 2)`` is contiguous).
        depth: (B, H, W) interpolated depth of the pixel centre, +inf for background.
        mask: (B, H, W) bool, True where covered.
    """

    face_index: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor


def to_screen(vertices_cam: torch.Tensor, scale: torch.Tensor, principal_point: torch.Tensor) -> torch.Tensor:
    """Weak-perspective camera-frame vertices to screen space.

    Args:
        vertices_cam: (B, N, 3) OpenCV camera-frame points in mm (x right, y down, z away).
        scale: (B,) pixels per mm.
        principal_point: (B, 2) principal point ``c`` in pixels.

    Returns:
        (B, N, 3) ``[s * X[..., :2] + c, s * X[..., 2]]``.

    Convention: x, y in pixels with 0-based pixel centres (as :func:`facerecon.geometry.weak_perspective_project`);
    z = scaled camera depth, larger = farther (pixels).
    """
    s = scale[..., None, None]
    xy = s * vertices_cam[..., :2] + principal_point[..., None, :]
    return torch.cat([xy, s * vertices_cam[..., 2:3]], dim=-1)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _triangle_setup(
    v: torch.Tensor, faces: torch.Tensor, height: int, width: int, cull_backfaces: bool
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Per-triangle rasterisation data.

    Args:
        v: (B, N, 3) detached screen vertices (float32 or float64).
        faces: (F, 3) int64.
        height: H.
        width: W.
        cull_backfaces: drop triangles facing away from the camera.

    Returns:
        ``table`` (18, B*F) float: per edge k (opposite vertex k) its origin ``ox_k`` (3 rows), ``oy_k`` (3),
        signed direction ``ex_k`` (3), ``ey_k`` (3), the thresholds ``t_k`` (3) and the vertex depths minus the
        smallest depth (3); ``ints``: three (B*F,) int64 tensors, the bbox left column, top row and width;
        ``counts`` (B*F,) int64 number of bbox pixels (0 for triangles that cannot cover any).

    Convention: a pixel centre (x, y) is inside iff ``w_k = (x - ox_k) * ey_k - (y - oy_k) * ex_k > t_k`` for the
    three edges; ``t_k`` is 0, or -tiny (i.e. ">= 0") on top-left edges. The origin is the edge's endpoint of lower
    vertex index and the direction is negated as needed (exact), so the two triangles sharing an edge evaluate
    exactly opposite values, and ``w_k`` is exactly 0 at both endpoints.
    """
    b, n, _ = v.shape
    nf = faces.shape[0]
    dt = v.dtype
    vx, vy, vz = v.permute(2, 0, 1).reshape(3, b * n).unbind(0)  # contiguous (B*N,) each
    ft = faces.T.contiguous()  # (3, F): vertex k of every face
    offset = (torch.arange(b, device=v.device) * n)[:, None, None] if b > 1 else None

    def gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (B*N,), (3, F) -> (B, 3, F)
        flat = index.reshape(-1) if offset is None else (index + offset).reshape(-1)
        return values.index_select(0, flat).view(b, 3, nf)

    xs, ys, zs = gather(vx, ft), gather(vy, ft), gather(vz, ft)
    x0, x1, x2 = xs.unbind(1)
    y0, y1, y2 = ys.unbind(1)
    area2 = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)  # (B, F); < 0: front-facing (CCW with y up)
    # Non-finite x or y make area2 non-finite (overflowing coordinates too); check z through its sum.
    valid = (area2 != 0) & torch.isfinite(area2) & torch.isfinite(zs.sum(1))
    if cull_backfaces:
        valid = valid & (area2 < 0)

    # Canonical edges (endpoint of lower vertex index first): edge k joins vertices k+1 and k+2.
    fa = ft.roll(-1, 0)
    fb = ft.roll(-2, 0)
    lo = torch.minimum(fa, fb)
    hi = torch.maximum(fa, fb)
    xl, yl = gather(vx, lo), gather(vy, lo)
    # Edge function w = (x - xl) * ey - (y - yl) * ex with (ex, ey) = sign * (v_hi - v_lo): exactly 0 at both
    # endpoints, exactly opposite for the two triangles of an edge, and positive inside thanks to the sign.
    sign = torch.where(fa > fb, 1.0, -1.0).to(dt) * torch.sign(area2)[:, None]
    ex = (gather(vx, hi) - xl) * sign
    ey = (gather(vy, hi) - yl) * sign
    tie = (ey > 0) | ((ey == 0) & (ex < 0))  # the inside lies to +x of the edge, or below (+y) a horizontal edge
    thresh = tie.to(dt) * -torch.finfo(dt).tiny
    zmin = torch.where(torch.isfinite(vz), vz, torch.inf).amin().clamp(-torch.finfo(dt).max, torch.finfo(dt).max)
    table = torch.cat([xl, yl, ex, ey, thresh, zs - zmin], dim=1)  # (B, 18, F)
    table = table.reshape(18, nf) if b == 1 else table.transpose(0, 1).reshape(18, b * nf)

    # Pixel bounding boxes clipped to the image (values of invalid triangles are never used).
    bx0 = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2)).clamp(0.0, width).long()
    by0 = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2)).clamp(0.0, height).long()
    bw = torch.floor(torch.maximum(torch.maximum(x0, x1), x2)).clamp(-1.0, width - 1.0).long() - bx0 + 1
    bh = torch.floor(torch.maximum(torch.maximum(y0, y1), y2)).clamp(-1.0, height - 1.0).long() - by0 + 1
    counts = torch.where(valid, bw.clamp_min(0) * bh.clamp_min(0), 0).reshape(-1)
    ints = [bx0.reshape(-1), by0.reshape(-1), bw.reshape(-1)]
    return table, ints, counts


def rasterize(
    screen: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    cull_backfaces: bool = False,
    max_pairs: int = MAX_PAIRS,
) -> Fragments:
    """Rasterise a batch of triangle meshes with a z-buffer.

    Args:
        screen: (B, N, 3) screen-space vertices: pixel x, y and depth z (larger = farther).
        faces: (F, 3) int64 vertex indices, shared by the batch.
        height: image height H.
        width: image width W.
        cull_backfaces: if True, skip triangles facing away from the camera, i.e. clockwise in the model/view frame
            (y up) = counter-clockwise on screen (y down). Default False: both sides are drawn and the z-buffer
            decides.
        max_pairs: maximum number of candidate (triangle, pixel) pairs per chunk (bounds memory; a triangle bigger
            than this is split across chunks).

    Returns:
        :class:`Fragments`; ``bary`` and ``depth`` carry gradients to ``screen`` (visibility does not).

    Convention: 0-based pixel centres, a pixel is covered iff its centre is inside the triangle (top-left rule on
    edges, see the module docstring); the smallest depth wins (ties, at float32 resolution, to the lower face
    index). Degenerate (zero-area) triangles and triangles with non-finite vertices cover nothing.
    """
    if screen.ndim != 3 or screen.shape[-1] != 3:
        raise ValueError(f"screen must be (B, N, 3), got {tuple(screen.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    faces = faces.to(device=screen.device, dtype=torch.long)
    b, nf = screen.shape[0], faces.shape[0]
    device = screen.device
    face_bits = max(int(nf).bit_length(), 1)
    key_buf = torch.full((b * height * width,), _INT64_MAX, dtype=torch.long, device=device)

    with torch.no_grad():
        total = 0
        if nf > 0 and screen.numel() > 0:
            v = screen.detach().to(_work_dtype(screen.dtype))
            table, ints, counts = _triangle_setup(v, faces, height, width, cull_backfaces)
            ends = torch.cumsum(counts, 0)
            total = int(ends[-1])
            starts = ends - counts
        for lo in range(0, total, max_pairs):
            hi = min(lo + max_pairs, total)
            idx = torch.arange(lo, hi, device=device)
            if lo == 0 and hi == total:
                t = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts, output_size=total)
            else:
                t = torch.searchsorted(ends, idx, right=True)
            _scatter_chunk(key_buf, table, ints, t, idx - starts.index_select(0, t), nf, height, width, face_bits)
        face_index = torch.where(key_buf == _INT64_MAX, -1, key_buf & ((1 << face_bits) - 1))
    return _fragments_from_faces(screen, faces, face_index.view(b, height, width))


def _scatter_chunk(
    key_buf: torch.Tensor,
    table: torch.Tensor,
    ints: list[torch.Tensor],
    t: torch.Tensor,
    local: torch.Tensor,
    nf: int,
    height: int,
    width: int,
    face_bits: int,
) -> None:
    """Inside test and z-buffer update for a chunk of P candidate (triangle, pixel) pairs.

    Args:
        key_buf: (B*H*W,) int64 z-buffer keys, updated in place.
        table: (18, B*F) per-triangle float data (see :func:`_triangle_setup`).
        ints: per-triangle int data (see :func:`_triangle_setup`).
        t: (P,) flat triangle index (batch * F + face) of each pair.
        local: (P,) index of the pixel within the triangle's bounding box (row-major).
        nf: F.
        height: H.
        width: W.
        face_bits: bits reserved for the face id in the key.
    """
    bx0, by0, bw = (x.index_select(0, t) for x in ints)
    ly = torch.div(local, bw, rounding_mode="floor")
    px = bx0 + (local - ly * bw)
    py = by0 + ly
    pxf = px.to(table.dtype)
    pyf = py.to(table.dtype)
    r = [table[i].index_select(0, t) for i in range(15)]  # 1-D gathers: faster than one 2-D gather
    w = [(pxf - r[k]) * r[9 + k] - (pyf - r[3 + k]) * r[6 + k] for k in range(3)]  # edge functions
    sel = ((w[0] > r[12]) & (w[1] > r[13]) & (w[2] > r[14])).nonzero().squeeze(1)
    # Depth and key only for the pixel centres inside.
    t = t.index_select(0, sel)
    w = [x.index_select(0, sel) for x in w]
    num = sum(w[k] * table[15 + k].index_select(0, t) for k in range(3))
    z = num / (w[0] + w[1] + w[2])
    # Non-negative float32 bits compare like the floats: pack (depth, face) into one int64 key.
    batch = torch.div(t, nf, rounding_mode="floor")
    key = (z.to(torch.float32).clamp_min(0.0).view(torch.int32).long() << face_bits) | (t - batch * nf)
    pix = (batch * height + py.index_select(0, sel)) * width + px.index_select(0, sel)
    key_buf.scatter_reduce_(0, pix, key, reduce="amin")


def _gather_planes(values: torch.Tensor, vidx: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Gather per-vertex values of the three vertices of each pixel's triangle.

    Args:
        values: (B, N, C) per-vertex values.
        vidx: three (B*P,) flat vertex indices ``batch * N + vertex`` (vertex k of each pixel's triangle).

    Returns:
        ``planes[c][k]``: (B*P,) contiguous values of channel c at vertex k (1-D gathers of contiguous channels are
        the fastest layout for the elementwise math that follows).
    """
    b, n, c = values.shape
    channels = values.reshape(b * n, c).T.contiguous().unbind(0) if c > 1 else (values.reshape(b * n),)
    return [[ch.index_select(0, i) for i in vidx] for ch in channels]


def _pixel_vertices(faces: torch.Tensor, face_index: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Three (B*H*W,) flat vertex indices ``batch * N + faces[face_index, k]`` (face 0 for background pixels)."""
    b = face_index.shape[0]
    hw = face_index[0].numel()
    fi = face_index.clamp_min(0).reshape(-1)
    vidx = [col.index_select(0, fi) for col in faces.T.contiguous().unbind(0)]
    if b > 1:
        offset = torch.arange(b, device=fi.device).repeat_interleave(hw) * n
        vidx = [v + offset for v in vidx]
    return vidx


def _fragments_from_faces(screen: torch.Tensor, faces: torch.Tensor, face_index: torch.Tensor) -> Fragments:
    """Differentiable barycentrics and depth of each pixel centre in its winning triangle.

    Args:
        screen: (B, N, 3) screen vertices (may require grad).
        faces: (F, 3) int64.
        face_index: (B, H, W) int64, -1 for background.

    Returns:
        :class:`Fragments` with ``bary`` and ``depth`` differentiable w.r.t. ``screen``.
    """
    b, h, w = face_index.shape
    device, dtype = screen.device, screen.dtype
    mask = face_index >= 0
    if faces.numel() == 0 or screen.shape[1] == 0:
        return Fragments(face_index=face_index, bary=screen.new_zeros(b, h, w, 3),
                         depth=screen.new_full((b, h, w), torch.inf), mask=mask)
    (x0, x1, x2), (y0, y1, y2), zs = _gather_planes(screen, _pixel_vertices(faces, face_index, screen.shape[1]))
    px = torch.arange(w, device=device, dtype=dtype).repeat(b * h)
    py = torch.arange(h, device=device, dtype=dtype).repeat_interleave(w).repeat(b)
    x0, x1, x2 = x0 - px, x1 - px, x2 - px
    y0, y1, y2 = y0 - py, y1 - py, y2 - py
    # Signed double areas of the sub-triangles opposite each vertex: (p, v1, v2), (p, v2, v0), (p, v0, v1).
    sub = torch.stack([x1 * y2 - y1 * x2, x2 * y0 - y2 * x0, x0 * y1 - y0 * x1])
    m = mask.reshape(-1)
    total = sub[0] + sub[1] + sub[2]  # twice the signed area; only 0 for background (or a float32 sliver)
    m_ok = m & (total != 0)
    total = torch.where(m_ok, total, torch.ones((), device=device, dtype=dtype))
    bary = torch.where(m_ok, sub / total, torch.zeros((), device=device, dtype=dtype))  # (3, B*H*W)
    depth = bary[0] * zs[0] + bary[1] * zs[1] + bary[2] * zs[2]
    depth = torch.where(m, depth, torch.full((), torch.inf, device=device, dtype=dtype))
    return Fragments(face_index=face_index, bary=bary.T.view(b, h, w, 3), depth=depth.view(b, h, w), mask=mask)
