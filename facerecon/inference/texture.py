"""UV textures for export: photo colours where the face is visible, the fitted albedo elsewhere, seams blended.

The ICT-FaceKit surface carries UVs (``uvs`` (T, 2), ``face_uvs`` (F, 3)); a UV index belongs to one mesh vertex, so
a textured mesh has one vertex per UV index (vertices are split along the UV seams). The texture is rasterised in UV
space with the same renderer as the face, from per-vertex colours, then dilated into the empty texels so the seams
and mip-maps do not show the background.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from facerecon.render import render


@dataclass
class TexturedMesh:
    """A mesh split along its UV seams, with a texture.

    Attributes:
        vertices: (T, 3) positions (one per UV index).
        faces: (F, 3) triangles indexing ``vertices`` and ``uvs``.
        uvs: (T, 2) texture coordinates (OpenGL convention: v = 0 at the bottom of the image).
        texture: (S, S, 3) uint8 RGB image.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    texture: np.ndarray


def uv_vertex_map(faces: np.ndarray, face_uvs: np.ndarray, n_uvs: int) -> np.ndarray:
    """(T,) mesh-vertex index of each UV index (every UV index is used by exactly one vertex in ICT-FaceKit)."""
    out = np.full(n_uvs, -1, dtype=np.int64)
    out[face_uvs.reshape(-1)] = faces.reshape(-1)
    if (out < 0).any():
        raise ValueError("some UV indices are not used by any triangle")
    return out


def bake_texture(vertex_colors: np.ndarray, faces: np.ndarray, uvs: np.ndarray, face_uvs: np.ndarray,
                 size: int = 512, dilate: int = 8) -> np.ndarray:
    """Rasterise per-vertex colours into a UV texture.

    Args:
        vertex_colors: (N, 3) colours in [0, 1].
        faces: (F, 3) mesh triangles.
        uvs: (T, 2) texture coordinates.
        face_uvs: (F, 3) UV index of each triangle corner.
        size: texture side in pixels.
        dilate: pixels of seam padding grown into the empty texels.

    Returns:
        (size, size, 3) uint8 RGB texture (row 0 is v = 1, as image files store it).

    Convention: texel (i, j) centre is at u = (i + 0.5) / size, v = 1 - (j + 0.5) / size.
    """
    vmap = uv_vertex_map(faces, face_uvs, len(uvs))
    screen = np.stack([uvs[:, 0] * size - 0.5, (1.0 - uvs[:, 1]) * size - 0.5, np.zeros(len(uvs))], 1)
    colors = np.clip(vertex_colors[vmap], 0, 1)
    out = render(torch.from_numpy(screen).float()[None], torch.from_numpy(face_uvs).long(),
                 torch.from_numpy(colors).float()[None], size, size)
    img = (out.image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    mask = (out.mask[0, 0].numpy() > 0.5).astype(np.uint8)
    for _ in range(dilate):  # grow colours into empty texels (seam padding)
        grown = cv2.dilate(img, np.ones((3, 3), np.uint8))
        grown_mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
        fill = (grown_mask > 0) & (mask == 0)
        # Average of the covered neighbours rather than the max: blur the covered colours and normalise.
        acc = cv2.blur(img.astype(np.float32) * mask[..., None], (3, 3))
        cnt = cv2.blur(mask.astype(np.float32), (3, 3))[..., None]
        avg = np.where(cnt > 0, acc / np.maximum(cnt, 1e-6), grown).round().astype(np.uint8)
        img[fill] = avg[fill]
        mask = grown_mask
    return img


def textured_mesh(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, face_uvs: np.ndarray,
                  vertex_colors: np.ndarray, size: int = 512) -> TexturedMesh:
    """Split a mesh along its UV seams and bake its vertex colours into a texture."""
    vmap = uv_vertex_map(faces, face_uvs, len(uvs))
    texture = bake_texture(vertex_colors, faces, uvs, face_uvs, size)
    return TexturedMesh(vertices=np.asarray(vertices)[vmap], faces=np.asarray(face_uvs), uvs=np.asarray(uvs),
                        texture=texture)
