"""Camera transforms, weak-perspective projection, crop boxes and the image <-> crop pixel maps.

See :mod:`facerecon.geometry` for the frame and pixel conventions. Everything is pure and batched; leading dimensions
``...`` (usually ``B``) must broadcast between arguments.
"""

from __future__ import annotations

import torch

__all__ = [
    "box_area",
    "box_from_points",
    "box_iou",
    "camera_to_view",
    "crop_affine",
    "crop_to_image",
    "image_to_crop",
    "model_to_camera",
    "scale_box",
    "weak_perspective_project",
]


def _flip_yz(points: torch.Tensor) -> torch.Tensor:
    """Multiply points (..., 3) by F = diag(1, -1, -1) (view frame <-> OpenCV camera axes)."""
    f = torch.tensor([1.0, -1.0, -1.0], device=points.device, dtype=points.dtype)
    return points * f


def model_to_camera(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Transform model-frame points to the OpenCV camera frame.

    Args:
        points: (B, N, 3) model-frame points in mm.
        rotation: (B, 3, 3) head rotation ``R`` (model frame -> view frame).
        translation: (B, 3) camera-frame translation ``t`` in mm.

    Returns:
        (B, N, 3) ``X_cam = F @ (R @ X) + t`` with ``F = diag(1, -1, -1)``.

    Convention: model/view frame +x subject's left, +y up, +z towards the viewer; camera frame (OpenCV) x right,
    y down, z away from the camera; mm.
    """
    view = points @ rotation.transpose(-1, -2)
    return _flip_yz(view) + translation[..., None, :]


def camera_to_view(points_cam: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Undo the camera translation and axis flip: camera-frame points back to the view frame.

    Args:
        points_cam: (B, N, 3) OpenCV camera-frame points in mm.
        translation: (B, 3) the ``t`` used by :func:`model_to_camera`.

    Returns:
        (B, N, 3) view-frame points ``R @ X = F @ (X_cam - t)``.

    Convention: view frame = model frame axes after rotation (+y up, +z towards the camera); mm.
    """
    return _flip_yz(points_cam - translation[..., None, :])


def weak_perspective_project(
    points_cam: torch.Tensor, scale: torch.Tensor, principal_point: torch.Tensor
) -> torch.Tensor:
    """Project camera-frame points with a weak-perspective (scaled orthographic) camera.

    Args:
        points_cam: (B, N, 3) OpenCV camera-frame points in mm.
        scale: (B,) pixels per mm.
        principal_point: (B, 2) principal point ``c = (cx, cy)`` in pixels.

    Returns:
        (B, N, 2) pixel coordinates ``uv = s * X_cam[..., :2] + c``.

    Convention: 0-based pixel centres (pixel (i, j) has its centre at x = i, y = j), x right, y down; depth is ignored.
    """
    return scale[..., None, None] * points_cam[..., :2] + principal_point[..., None, :]


def _box_origin_size(box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x0, y0)`` and ``(x1 - x0, y1 - y0)`` of boxes (..., 4) as (..., 1, 2) tensors."""
    origin = box[..., None, :2]
    size = box[..., None, 2:] - origin
    return origin, size


def image_to_crop(points: torch.Tensor, box: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Map image pixel coordinates into the pixel coordinates of a ``crop_size`` x ``crop_size`` crop of ``box``.

    Args:
        points: (B, N, 2) image pixel coordinates (x, y).
        box: (B, 4) crop box ``[x0, y0, x1, y1]`` in image coordinates (edges, not centres).
        crop_size: side of the crop in pixels.

    Returns:
        (B, N, 2) crop pixel coordinates ``q = (p - [x0, y0]) * crop_size / [x1 - x0, y1 - y0] - 0.5``.

    Convention: 0-based pixel centres in both images; the box's edges map to the crop's edges -0.5 and
    crop_size - 0.5. Each axis is scaled separately, so non-square boxes stretch.
    """
    origin, size = _box_origin_size(box)
    return (points - origin) * (crop_size / size) - 0.5


def crop_to_image(points: torch.Tensor, box: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Map crop pixel coordinates back to image pixel coordinates (inverse of :func:`image_to_crop`).

    Args:
        points: (B, N, 2) crop pixel coordinates (x, y).
        box: (B, 4) crop box ``[x0, y0, x1, y1]`` in image coordinates.
        crop_size: side of the crop in pixels.

    Returns:
        (B, N, 2) image pixel coordinates ``p = (q + 0.5) * [x1 - x0, y1 - y0] / crop_size + [x0, y0]``.

    Convention: 0-based pixel centres in both images (see :func:`image_to_crop`).
    """
    origin, size = _box_origin_size(box)
    return (points + 0.5) * (size / crop_size) + origin


def crop_affine(box: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Affine matrix of the image -> crop map of :func:`image_to_crop`.

    Args:
        box: (B, 4) crop box ``[x0, y0, x1, y1]`` in image coordinates.
        crop_size: side of the crop in pixels.

    Returns:
        (B, 2, 3) matrices ``M`` with ``q = M[:, :, :2] @ p + M[:, :, 2]``; ``M[b]`` (as a numpy array) can be passed
        directly to ``cv2.warpAffine(image, M, (crop_size, crop_size))``.

    Convention: 0-based pixel centres, as used by OpenCV.
    """
    x0, y0, x1, y1 = box.unbind(-1)
    sx = crop_size / (x1 - x0)
    sy = crop_size / (y1 - y0)
    zero = torch.zeros_like(sx)
    row0 = torch.stack([sx, zero, -x0 * sx - 0.5], dim=-1)
    row1 = torch.stack([zero, sy, -y0 * sy - 0.5], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def box_from_points(points: torch.Tensor, scale: float = 1.6, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Square box around a set of 2D points (e.g. landmarks).

    Args:
        points: (B, N, 2) pixel coordinates (x, y).
        scale: side of the box relative to the larger side of the points' bounding box.
        valid: optional (B, N) bool mask; points where it is False are ignored. Every batch item needs at least one
            valid point (otherwise its box is NaN).

    Returns:
        (B, 4) boxes ``[x0, y0, x1, y1]`` centred on the centre of the valid points' axis-aligned bounding box, with
        side ``scale * max(bbox width, bbox height)``.

    Convention: pixel coordinates as given (0-based pixel centres); the returned box is in the continuous edge
    coordinates of the same system, no rounding.
    """
    if valid is None:
        lo = points.amin(dim=-2)
        hi = points.amax(dim=-2)
    else:
        mask = valid[..., None]
        inf = torch.tensor(float("inf"), device=points.device, dtype=points.dtype)
        lo = torch.where(mask, points, inf).amin(dim=-2)
        hi = torch.where(mask, points, -inf).amax(dim=-2)
    centre = 0.5 * (lo + hi)
    half = 0.5 * scale * (hi - lo).amax(dim=-1, keepdim=True)
    return torch.cat([centre - half, centre + half], dim=-1)


def scale_box(box: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Scale boxes about their centres.

    Args:
        box: (..., 4) boxes ``[x0, y0, x1, y1]``.
        factor: scalar or (...,) tensor; multiplies width and height.

    Returns:
        (..., 4) scaled boxes with the same centres.

    Convention: continuous edge coordinates (see :mod:`facerecon.geometry`).
    """
    f = torch.as_tensor(factor, device=box.device, dtype=box.dtype)[..., None]
    centre = 0.5 * (box[..., :2] + box[..., 2:])
    half = 0.5 * (box[..., 2:] - box[..., :2]) * f
    return torch.cat([centre - half, centre + half], dim=-1)


def view_boxes(box: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Boxes of test-time views of a crop: each box scaled about its centre and shifted by a fraction of its side.

    Args:
        box: (B, 4) boxes ``[x0, y0, x1, y1]``.
        views: (V, 3) views ``(m, dx, dy)``: side multiplier ``m`` and centre shift ``(dx * width, dy * height)``.

    Returns:
        (B, V, 4) view boxes; the view ``(1, 0, 0)`` is the box itself.

    Convention: continuous edge coordinates (see :mod:`facerecon.geometry`); x right, y down.
    """
    if box.shape[-1] != 4 or views.ndim != 2 or views.shape[-1] != 3:
        raise ValueError(f"view_boxes expects (B, 4) boxes and (V, 3) views, got {tuple(box.shape)} and "
                         f"{tuple(views.shape)}")
    v = views.to(device=box.device, dtype=box.dtype)
    size = (box[..., 2:] - box[..., :2])[..., None, :]  # (B, 1, 2)
    centre = 0.5 * (box[..., :2] + box[..., 2:])[..., None, :] + v[:, 1:] * size
    half = 0.5 * size * v[:, :1]
    return torch.cat([centre - half, centre + half], dim=-1)


def box_area(box: torch.Tensor) -> torch.Tensor:
    """Area of boxes.

    Args:
        box: (..., 4) boxes ``[x0, y0, x1, y1]``.

    Returns:
        (...,) ``max(x1 - x0, 0) * max(y1 - y0, 0)``.

    Convention: continuous edge coordinates, so a single pixel has area 1 (no ``+1``).
    """
    return (box[..., 2] - box[..., 0]).clamp_min(0) * (box[..., 3] - box[..., 1]).clamp_min(0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection over union.

    Args:
        a: (N, 4) boxes ``[x0, y0, x1, y1]`` (leading batch dims ``...`` allowed).
        b: (M, 4) boxes (same leading dims as ``a``).

    Returns:
        (N, M) IoU in [0, 1]; 0 where the union is empty.

    Convention: continuous edge coordinates (no ``+1``).
    """
    a_ = a[..., :, None, :]
    b_ = b[..., None, :, :]
    lo = torch.maximum(a_[..., :2], b_[..., :2])
    hi = torch.minimum(a_[..., 2:], b_[..., 2:])
    inter = (hi - lo).clamp_min(0).prod(dim=-1)
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return inter / union.clamp_min(torch.finfo(union.dtype).tiny)
