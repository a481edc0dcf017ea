"""Synthetic faces: determinism, landmark consistency, and the flip augmentation checked on a rendered face."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerecon.geometry import euler_to_matrix
from facerecon.models.facerecon import FaceParameters


@pytest.fixture(scope="module")
def gen(tiny_model):
    from training.synthetic import SyntheticFaces

    return SyntheticFaces(tiny_model, seed=3)


def test_boundary_loops_are_eyes_and_mouth(gen, tiny_model):
    assert len(gen.loops) == 3  # two eye openings and the mouth opening
    mean = tiny_model.morphable.mean
    centres = torch.stack([mean[loop].mean(0) for loop in gen.loops])
    lmk = mean[tiny_model.morphable.landmark_index]
    eye_l, eye_r, mouth = lmk[36:42].mean(0), lmk[42:48].mean(0), lmk[60:68].mean(0)
    for target in (eye_l, eye_r, mouth):
        assert (centres - target).norm(dim=-1).min() < 8.0  # mm


def test_batch_is_deterministic_and_consistent(gen):
    a, b = gen.batch(4, index=7), gen.batch(4, index=7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["landmarks"], b["landmarks"])
    assert not torch.equal(a["image"], gen.batch(4, index=8)["image"])
    assert a["image"].shape == (4, 3, 64, 64) and a["vertices"].shape == (4, 9409, 3)
    assert a["landmarks"].shape == (4, 71, 2) and bool(a["has_vertices"].all())
    assert float(a["image"].min()) >= 0 and float(a["image"].max()) <= 1
    assert a["yaw"].abs().max() <= 90.5


def _symmetric_params(model, yaw, roll, tx):
    angles = torch.tensor([[math.radians(yaw), math.radians(10.0), math.radians(roll)]])
    lighting = torch.zeros(1, 9, 3)
    lighting[:, 0] = 1.0
    return FaceParameters(identity=torch.zeros(1, model.config.n_identity), expression=torch.zeros(1, 53),
                          albedo=torch.zeros(1, model.config.n_albedo), lighting=lighting,
                          rotation=euler_to_matrix(angles), translation=torch.tensor([[tx, 0.0, 0.0]]),
                          scale=model.scale_prior.reshape(1).clone())


def test_flip_augmentation_matches_the_mirrored_face(gen, tiny_model):
    """Flipping a rendered face equals rendering the mirror pose; the landmarks follow EXTENDED_MIRROR."""
    from training.augment import Augmenter, GeometricParams

    s = tiny_model.config.input_size
    bg = torch.full((1, 3, s, s), 0.5)
    face = gen.render_params(_symmetric_params(tiny_model, 30.0, 8.0, 3.0), bg)
    mirror = gen.render_params(_symmetric_params(tiny_model, -30.0, -8.0, -3.0), bg)
    img = np.ascontiguousarray((face["image"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    aug = Augmenter(s)
    box = np.array([-0.5, -0.5, s - 0.5, s - 0.5])
    res = aug(img, box, face["landmarks"][0].numpy(), face["weights"][0].numpy(), np.random.default_rng(0),
              params=GeometricParams(flip=True))
    # Photometric steps are random; compare geometry only.
    err = np.linalg.norm(res.landmarks - mirror["landmarks"][0].numpy(), axis=1)
    assert err.max() < 0.3, err.max()
    assert res.flipped
    # The flipped image itself equals the mirrored render (up to photometric jitter): compare edges of the mask.
    flipped_geo = aug.warp(img, aug.affine(box, GeometricParams(flip=True)))
    mirror_img = (mirror["image"][0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(flipped_geo.astype(np.float64) - mirror_img).mean() < 4.0  # of 255
