"""Per-face image products of a reconstruction: the rendered overlay, the face and skin masks, photo colours.

Rendering happens in a window around the face, at most ``max_side`` pixels on a side, and is pasted back into the
photo, so the cost does not grow with the photo's resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from facerecon.geometry import vertex_normals
from facerecon.inference.pipeline import Reconstruction
from facerecon.render import rasterize, render, sample_image, vertex_visibility
from facerecon.skin import skin_mask


@dataclass
class FaceRender:
    """Renders of one face in a window of the photo.

    Attributes:
        window: (x0, y0, x1, y1) integer pixel window of the photo (x1, y1 exclusive).
        scale: window pixels per photo pixel.
        image: (h, w, 3) float32 rendered colours in [0, 1] (0 outside the face).
        mask: (h, w) float32 face-region coverage.
        skin: (h, w) float32 skin probability (0 outside the face region).
        photo: (h, w, 3) float32 the photo resampled into the window, in [0, 1].
    """

    window: tuple[int, int, int, int]
    scale: float
    image: np.ndarray
    mask: np.ndarray
    skin: np.ndarray
    photo: np.ndarray


def _window(face: Reconstruction, width: int, height: int, margin: float = 0.1) -> tuple[int, int, int, int]:
    xy = face.vertices_image[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    pad = margin * float((hi - lo).max())
    x0, y0 = max(0, math.floor(lo[0] - pad)), max(0, math.floor(lo[1] - pad))
    x1, y1 = min(width, math.ceil(hi[0] + pad) + 1), min(height, math.ceil(hi[1] + pad) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError("the face lies outside the photo")
    return x0, y0, x1, y1


def _window_screen(face: Reconstruction, width: int, height: int,
                   max_side: int) -> tuple[tuple[int, int, int, int], float, int, int, torch.Tensor]:
    """Render window of a face: (window, scale, window width, window height, (1, N, 3) screen vertices)."""
    x0, y0, x1, y1 = _window(face, width, height)
    scale = min(1.0, max_side / max(x1 - x0, y1 - y0))
    ww, wh = max(2, round((x1 - x0) * scale)), max(2, round((y1 - y0) * scale))
    xy = (face.vertices_image[:, :2] - [x0, y0] + 0.5) * scale - 0.5
    screen = torch.from_numpy(np.concatenate([xy, face.vertices_image[:, 2:] * scale], 1)).float()[None]
    return (x0, y0, x1, y1), scale, ww, wh, screen


def render_face(image: np.ndarray, face: Reconstruction, colors: np.ndarray | None = None,
                max_side: int = 512) -> FaceRender:
    """Render a reconstructed face over its window of the photo, with its skin mask.

    Args:
        image: (H, W, 3) uint8 RGB photo the face was reconstructed from.
        face: the reconstruction.
        colors: (N, 3) vertex colours in [0, 1] (default: the shaded colours).
        max_side: largest side of the render window in pixels.

    Returns:
        :class:`FaceRender`.

    Convention: 0-based pixel centres; the window's pixel (u, v) is photo pixel ((u + 0.5) / scale - 0.5 + x0, ...).
    """
    (x0, y0, x1, y1), scale, ww, wh, screen_t = _window_screen(face, image.shape[1], image.shape[0], max_side)
    region = image[y0:y1, x0:x1]
    photo = cv2.resize(region, (ww, wh), interpolation=cv2.INTER_AREA) if scale < 1 else region
    photo_t = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)[None].float() / 255.0
    cols = torch.from_numpy(np.asarray(face.colors if colors is None else colors, dtype=np.float32))[None]
    faces = torch.from_numpy(face.faces)
    out = render(screen_t, faces, cols.clamp(0, 1), wh, ww)
    lmk = torch.from_numpy((face.landmarks - [x0, y0] + 0.5) * scale - 0.5).float()[None]
    skin = skin_mask(photo_t, out.mask, lmk)
    return FaceRender(window=(x0, y0, x1, y1), scale=scale, image=out.image[0].permute(1, 2, 0).numpy(),
                      mask=out.mask[0, 0].numpy(), skin=skin[0, 0].numpy(), photo=photo_t[0].permute(1, 2, 0).numpy())


def paste(canvas: np.ndarray, fr: FaceRender, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-blend a window-sized ``layer`` (h, w, C) in [0, 1] into a copy of ``canvas`` (H, W, C) uint8."""
    x0, y0, x1, y1 = fr.window
    size = (x1 - x0, y1 - y0)
    if layer.shape[:2] != (y1 - y0, x1 - x0):
        layer = cv2.resize(layer, size, interpolation=cv2.INTER_LINEAR)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_LINEAR)
    out = canvas.copy()
    a = alpha[..., None] if out.ndim == 3 else alpha
    lay = layer if out.ndim == 3 else layer.reshape(alpha.shape)
    blended = (1 - a) * out[y0:y1, x0:x1].astype(np.float32) + a * lay * 255.0
    out[y0:y1, x0:x1] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out


def smooth_vertex_weights(weights: np.ndarray, faces: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Blur a per-vertex weight over the mesh (mean over incident triangles, repeated), keeping it in [0, 1]."""
    w = weights.astype(np.float64)
    counts = np.bincount(faces.reshape(-1), minlength=len(w)).astype(np.float64)
    for _ in range(iterations):
        tri = w[faces].mean(1)
        w = np.bincount(faces.reshape(-1), weights=np.repeat(tri, 3), minlength=len(w)) / np.maximum(counts, 1)
    return np.clip(w, 0.0, 1.0)


def photo_colors(image: np.ndarray, face: Reconstruction, max_side: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Photo colours where the face is visible, the fitted albedo (with the fitted lighting) where it is hidden.

    The visibility is blurred over the mesh before blending, so the seam between photo and albedo is soft and
    silhouette vertices (sampled at grazing angles) lean towards the albedo.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        face: the reconstruction.
        max_side: the visibility test runs in a window of at most this size.

    Returns:
        (N, 3) colours in [0, 1] and (N,) bool visibility.
    """
    _, _, ww, wh, screen = _window_screen(face, image.shape[1], image.shape[0], max_side)
    faces = torch.from_numpy(face.faces)
    frags = rasterize(screen, faces, wh, ww)
    normals = vertex_normals(torch.from_numpy(face.vertices_view)[None], faces)
    visible = vertex_visibility(screen, faces, frags, normals=normals)[0].numpy()
    img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    sampled = sample_image(img_t, torch.from_numpy(face.vertices_image[:, :2]).float()[None])[0].numpy()
    w = smooth_vertex_weights(visible.astype(np.float64), face.faces) * visible  # hidden stays albedo
    colors = w[:, None] * sampled + (1 - w[:, None]) * np.clip(face.colors, 0, 1)
    return colors.astype(np.float32), visible
