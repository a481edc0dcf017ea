"""Per-face renders: window geometry, skin mask, photo colours, drawing helpers."""

from __future__ import annotations

import numpy as np
import pytest

from facerecon.inference.visual import paste, photo_colors, render_face
from facerecon.visualize import attention_overlay, draw_landmarks, draw_pose_axes


@pytest.fixture(scope="module")
def face_and_image(tiny_model, astronaut):
    return tiny_model.reconstruct(astronaut, max_faces=1)[0], astronaut


def test_render_face_covers_the_landmarks(face_and_image):
    face, img = face_and_image
    fr = render_face(img, face, max_side=256)
    x0, y0, x1, y1 = fr.window
    assert max(fr.mask.shape) <= 256 and fr.image.shape[:2] == fr.mask.shape == fr.skin.shape
    # The nose tip projects inside the rendered face region.
    nx, ny = (face.landmarks[30] - [x0, y0] + 0.5) * fr.scale - 0.5
    assert fr.mask[int(round(ny)), int(round(nx))] > 0.5
    assert 0.0 <= fr.skin.min() and fr.skin.max() <= 1.0 and (fr.skin[fr.mask < 0.5] == 0).all()
    out = paste(img, fr, fr.image, fr.mask)
    assert out.shape == img.shape and not np.array_equal(out, img)
    assert np.array_equal(out[:y0], img[:y0])  # nothing changes outside the window


def test_photo_colors_sample_visible_vertices(face_and_image):
    face, img = face_and_image
    colors, visible = photo_colors(img, face)
    assert colors.shape == (9409, 3) and visible.dtype == bool and 0.2 < visible.mean() < 0.9
    k = int(np.flatnonzero(visible)[0])
    x, y = face.vertices_image[k, :2]
    i, j = int(np.floor(x)), int(np.floor(y))
    local = img[j:j + 2, i:i + 2].reshape(-1, 3) / 255.0
    assert (colors[k] >= local.min(0) - 1e-4).all() and (colors[k] <= local.max(0) + 1e-4).all()


def test_drawing_helpers_do_not_modify_inputs(face_and_image):
    face, img = face_and_image
    before = img.copy()
    a = draw_landmarks(img, face.landmarks)
    b = draw_pose_axes(img, face.rotation, tuple(face.landmarks[30]), 50.0)
    c = attention_overlay(face.crop, face.attention[0])
    assert np.array_equal(img, before)
    assert a.shape == b.shape == img.shape and c.shape == face.crop.shape
    assert not np.array_equal(a, img) and not np.array_equal(b, img)
