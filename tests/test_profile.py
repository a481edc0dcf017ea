"""Face profiling (training/profile_faces.py): turned views whose labels agree with the turned reconstruction."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training import profile_faces as pf


def test_yaw_rotation_camera_is_a_rotation_that_turns_the_front_to_the_image_left():
    r = pf.yaw_rotation_camera(0.3)
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert float(torch.det(r)) == pytest.approx(1.0)
    front = r @ torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)  # a point in front of the centre
    assert torch.allclose(front, torch.tensor([-math.sin(0.3), 0.0, -math.cos(0.3)], dtype=torch.float64))


def test_complete_depth_keeps_the_inside_and_flattens_far_away():
    h = w = 80
    mask = np.zeros((h, w), bool)
    mask[20:60, 20:60] = True
    ys, xs = np.mgrid[0:h, 0:w]
    depth = np.where(mask, 10.0 + 0.1 * xs, np.inf)
    out = pf.complete_depth(depth, mask, back_depth=30.0, falloff=8.0)
    assert np.isfinite(out).all()
    assert np.allclose(out[30:50, 30:50], depth[30:50, 30:50], atol=1e-4)  # well inside: unchanged
    assert abs(out[0, 0] - 30.0) < 0.5  # far corner: the background depth
    assert np.abs(np.diff(out, axis=1)).max() < 3.0  # no step at the outline


def test_turn_scene_identity_and_a_flat_plane():
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8), (0, 0), 1.0)
    flat = np.full((40, 48), 5.0, np.float32)
    pts = np.array([[10.0, 12.0, 5.0], [30.0, 20.0, 2.0]])
    out, turned = pf.turn_scene(img, flat, pts, torch.eye(3, dtype=torch.float64), np.array([24.0, 20.0, 5.0]))
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 1 and np.allclose(turned, pts)
    a = 0.5
    out, turned = pf.turn_scene(img, flat, pts, pf.yaw_rotation_camera(a), np.array([24.0, 20.0, 5.0]), pad=12)
    # A plane at the centre's depth: x' = cx + cos(a) (x - cx); points off the plane also move with depth.
    assert turned[0, 0] == pytest.approx(24.0 + math.cos(a) * (10.0 - 24.0))
    assert turned[1, 0] == pytest.approx(24.0 + math.cos(a) * 6.0 + math.sin(a) * (2.0 - 5.0))
    assert turned[1, 2] == pytest.approx(5.0 - math.sin(a) * 6.0 + math.cos(a) * (2.0 - 5.0))
    col = int(round(24.0 + math.cos(a) * (8.0 - 24.0)))  # source column 8 lands here
    assert np.abs(out[5:35, col].astype(int) - img[5:35, 8].astype(int)).mean() < 12


def _record(tmp_path, model):
    """A 300-W-style record whose labels are the model's own landmarks (in its box) on a smooth random photo."""
    from training.data import FaceSample, extend_landmarks_np

    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8), (0, 0), 2.0)
    path = tmp_path / "face.jpg"
    cv2.imwrite(str(path), img[..., ::-1])
    img = cv2.imread(str(path))[..., ::-1].copy()
    box0 = np.array([16.0, 16.0, 80.0, 80.0])
    labels = pf.face_geometry(model, [img], box0[None])["landmarks"][0, :, :2].double().numpy()
    rec = FaceSample(source="300w", name="face.jpg", image_path=path, box=box0,
                     landmarks=extend_landmarks_np(labels).astype(np.float32), weights=np.ones(71, np.float32),
                     yaw_estimate=0.0, group="300w/face")
    return img, rec


def test_turned_labels_are_the_reconstruction_under_the_turned_rotation(tiny_model, tmp_path):
    from facerecon.geometry import crop_to_image, matrix_to_euler

    img, rec = _record(tmp_path, tiny_model)
    geo = pf.face_geometry(tiny_model, [img], rec.box[None])
    res = pf.profile_face(tiny_model.morphable.faces, img, rec.landmarks[:68], geo, 0, 30.0)
    assert res["image"].shape == img.shape and res["image"].dtype == np.uint8
    # Decoding the same parameters with the turned rotation puts the landmarks where the turned labels are.
    size = tiny_model.config.input_size
    from facerecon.inference.crop import crop_face

    x = torch.from_numpy(crop_face(img, rec.box, size)).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        params = tiny_model(x, flip_test=True).params
        params.rotation = res["rotation"][None].to(params.rotation.dtype)
        turned = tiny_model.decode(params, landmarks_only=True).landmarks_2d
    expect = crop_to_image(turned, torch.from_numpy(rec.box).float()[None], size)[0].numpy()
    assert np.abs(expect - res["landmarks"]).max() < 0.05
    # From a frontal head, the turn is a pure yaw of the requested angle (positive: towards the image left).
    geo["rotation"] = torch.eye(3)[None]
    res = pf.profile_face(tiny_model.morphable.faces, img, rec.landmarks[:68], geo, 0, 30.0)
    euler = matrix_to_euler(res["rotation"][None].double())[0]
    assert torch.allclose(euler, torch.tensor([math.radians(30.0), 0.0, 0.0], dtype=torch.float64), atol=1e-6)


def test_profile_records_round_trip_and_split_guard(tiny_model, tmp_path):
    from training.config import TrainConfig

    img, rec = _record(tmp_path, tiny_model)
    path = pf.profile_records(tiny_model, [rec], tmp_path / "out", views=2, seed=0)
    recs = pf.load_profiled(tmp_path / "out", allowed_origins={"300w/face.jpg"})
    with np.load(path) as d:
        assert len(recs) == 2 and np.allclose(recs[1].landmarks[:68], d["landmarks"][1])
        assert recs[0].yaw == pytest.approx(float(d["yaw"][0]))
        turns = d["turn"]
    assert all(abs(t) <= pf.MAX_TURN for t in turns) and turns[0] != turns[1]
    r = recs[0]
    assert r.source == "300w" and r.stratum == "profiled" and r.group == "300w/face" and r.image_path.is_file()
    assert r.weights.shape == (71,) and (r.weights == 1).all() and np.isfinite(r.depth).all()
    assert np.allclose(r.landmarks[68], r.landmarks[36:42].mean(0), atol=1e-4)
    with pytest.raises(ValueError, match="outside the training split"):
        pf.load_profiled(tmp_path / "out", allowed_origins={"300w/other.jpg"})
    with pytest.raises(FileNotFoundError, match="profile_faces"):
        pf.load_profiled(tmp_path / "missing")
    with pytest.raises(ValueError, match="300w"):
        TrainConfig(sources=["aflw"], profiled="default")


def test_build_datasets_adds_profiled_training_faces_only(tiny_model, tmp_path):
    from training.config import load_config
    from training.data import make_splits
    from training.train import build_datasets

    try:
        splits = make_splits(seed=0, sources=["300w"])
    except FileNotFoundError as err:
        pytest.skip(str(err))
    tiny = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.yaml"
    cfg = load_config(tiny, [f"output_dir={tmp_path / 'run'}"])
    train_plain, _ = build_datasets(cfg, 64)
    pf.profile_records(tiny_model, pf.source_records(splits["train"])[:2], tmp_path / "ok", views=1)
    cfg.profiled = str(tmp_path / "ok")
    train, _ = build_datasets(cfg, 64)
    assert len(train) == len(train_plain) + 2
    assert {r.stratum for r in train.records[-2:]} == {"profiled"}
    assert train[len(train) - 1]["image"].shape == (3, 64, 64)
    pf.profile_records(tiny_model, pf.source_records(splits["val"])[:1], tmp_path / "bad", views=1)
    cfg.profiled = str(tmp_path / "bad")
    with pytest.raises(ValueError, match="outside the training split"):
        build_datasets(cfg, 64)
