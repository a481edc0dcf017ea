"""Drawing helpers for the app and the docs: landmarks, pose axes, attention maps, mesh overlays (numpy / OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np

#: Landmark groups of the iBUG 68 layout, drawn as polylines (indices, closed).
LANDMARK_GROUPS: tuple[tuple[range, bool], ...] = (
    (range(0, 17), False), (range(17, 22), False), (range(22, 27), False), (range(27, 31), False),
    (range(31, 36), False), (range(36, 42), True), (range(42, 48), True), (range(48, 60), True),
    (range(60, 68), True),
)


def _thickness(image: np.ndarray) -> int:
    return max(1, round(max(image.shape[:2]) / 400))


def draw_landmarks(image: np.ndarray, landmarks: np.ndarray, color: tuple[int, int, int] = (0, 255, 0),
                   lines: bool = True) -> np.ndarray:
    """Draw 68 landmarks on a copy of an RGB image.

    Args:
        image: (H, W, 3) uint8 RGB.
        landmarks: (68, 2) pixel coordinates (0-based pixel centres).
        color: RGB colour.
        lines: connect the points of each facial part.

    Returns:
        The annotated copy.
    """
    out = np.ascontiguousarray(image.copy())
    t = _thickness(out)
    pts = np.round(landmarks * 16).astype(np.int32)  # 4 fractional bits for sub-pixel drawing
    if lines and len(landmarks) == 68:
        for idx, closed in LANDMARK_GROUPS:
            cv2.polylines(out, [pts[list(idx)]], closed, color, t, cv2.LINE_AA, shift=4)
    for p in pts:
        cv2.circle(out, (int(p[0]), int(p[1])), 16 * (t + 1), color, -1, cv2.LINE_AA, shift=4)
    return out


def draw_pose_axes(image: np.ndarray, rotation: np.ndarray, origin: tuple[float, float], length: float) -> np.ndarray:
    """Draw the head's x (red), y (green) and z (blue) axes on a copy of an RGB image.

    Args:
        image: (H, W, 3) uint8 RGB.
        rotation: (3, 3) rotation from the model frame to the view frame (+y up, +z towards the camera).
        origin: pixel position of the axes' origin.
        length: axis length in pixels.

    Convention: view-frame y is up, image y is down, so an axis direction d maps to (d_x, -d_y) on screen.
    """
    out = np.ascontiguousarray(image.copy())
    t = _thickness(out) + 1
    o = np.asarray(origin, dtype=np.float64)
    colours = ((255, 0, 0), (0, 200, 0), (0, 90, 255))
    order = np.argsort(rotation[2])  # draw the axis pointing most towards the camera last
    for k in order:
        d = rotation[:, k]
        tip = o + length * np.array([d[0], -d[1]])
        cv2.arrowedLine(out, tuple(np.round(o).astype(int)), tuple(np.round(tip).astype(int)), colours[k], t,
                        cv2.LINE_AA, tipLength=0.15)
    return out


def attention_overlay(crop: np.ndarray, attention: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a (h, w) attention map, upsampled to the crop, over the crop as a heat map.

    Args:
        crop: (S, S, 3) uint8 RGB crop the model saw.
        attention: (h, w) non-negative map.
        alpha: heat-map opacity.
    """
    s = crop.shape[0]
    a = attention.astype(np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-8)
    a = cv2.resize(a, (crop.shape[1], s), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    heat = cv2.applyColorMap(np.round(a * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return np.round((1 - alpha) * crop + alpha * heat).astype(np.uint8)
