"""Cutting square face crops out of photos (numpy / OpenCV side of the crop <-> image transform)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from facerecon.geometry import crop_affine


def crop_face(image: np.ndarray, box: np.ndarray | list[float], size: int) -> np.ndarray:
    """Resample the square ``box`` of ``image`` to a ``size`` x ``size`` crop (black outside the image).

    Large boxes are first reduced with area averaging, so strong downscales do not alias.

    Args:
        image: (H, W, 3) uint8 RGB.
        box: [x0, y0, x1, y1] in image pixels (0-based pixel centres, continuous edge coordinates).
        size: crop side in pixels.

    Returns:
        (size, size, 3) uint8 crop; crop pixel q maps to image pixel p as in
        :func:`facerecon.geometry.image_to_crop`.
    """
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"invalid crop box {box.tolist()}")
    h, w = image.shape[:2]
    ratio = max(box[2] - box[0], box[3] - box[1]) / size
    if ratio > 1.5:
        # Area-reduce the part of the image the box covers, then warp the (smaller) region.
        rx0, ry0 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
        rx1, ry1 = min(int(math.ceil(box[2])) + 1, w), min(int(math.ceil(box[3])) + 1, h)
        if rx1 - rx0 < 2 or ry1 - ry0 < 2:
            return np.zeros((size, size, 3), dtype=np.uint8)
        region = image[ry0:ry1, rx0:rx1]
        nw, nh = max(1, round(region.shape[1] / ratio)), max(1, round(region.shape[0] / ratio))
        small = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
        fx, fy = nw / region.shape[1], nh / region.shape[0]
        box = np.array([(box[0] - rx0 + 0.5) * fx - 0.5, (box[1] - ry0 + 0.5) * fy - 0.5,
                        (box[2] - rx0 + 0.5) * fx - 0.5, (box[3] - ry0 + 0.5) * fy - 0.5])
        image = small
    m = crop_affine(torch.from_numpy(box)[None], size)[0].numpy()
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def square_box(center: tuple[float, float], side: float) -> np.ndarray:
    """[x0, y0, x1, y1] of the square of ``side`` centred on ``center``."""
    cx, cy = center
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dtype=np.float64)
