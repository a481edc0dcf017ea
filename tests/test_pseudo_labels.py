"""Pseudo-labels: merging into records (agreement gate, only missing targets), the fitted MediaPipe -> iBUG map."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import TrainConfig
from training.data import N_LANDMARKS, FaceSample, add_pseudo_labels, extend_landmarks_np, load_pseudo_labels
from training.pseudo_map import DEFAULT_MAP, apply_map, fit_map, fixed_map, load_map, map_matrix, point_errors


def _face(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """(n, 68, 2) plausible landmark sets: a jittered ellipse-ish layout around (100, 100), 80 px wide."""
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    base = np.stack([100 + 40 * np.cos(t), 100 + 50 * np.sin(t)], -1)
    return base[None] + rng.normal(0, 1.0, (n, 68, 2))


def _record(name: str, lmk68: np.ndarray, weights: np.ndarray) -> FaceSample:
    return FaceSample(source="aflw", name=name, image_path=Path(name), box=np.array([0.0, 0.0, 200.0, 200.0]),
                      landmarks=extend_landmarks_np(lmk68).astype(np.float32), weights=weights.astype(np.float32))


def test_add_pseudo_labels_fills_only_missing_targets_of_agreeing_faces():
    rng = np.random.default_rng(0)
    truth = _face(rng, 3)
    w = np.zeros(N_LANDMARKS)
    w[[17, 19, 21, 22, 24, 26, 36, 39, 42, 45, 30, 48, 54, 8]] = 1.0
    w[[2, 14]] = 0.5  # down-weighted manual points (AFLW ears) are kept and do not judge agreement
    recs = [_record(f"f{i}.jpg", truth[i], w) for i in range(3)]
    pseudo = truth + rng.normal(0, 0.5, truth.shape)  # agrees closely with the manual points
    pseudo[1] += 30.0  # disagrees: ~30 px off on an ~90 px face
    labels = {"names": np.array(["f0.jpg", "f1.jpg", "f2.jpg", "other.jpg"]),
              "landmarks": np.concatenate([pseudo, truth[:1]]).astype(np.float32),
              "found": np.array([True, True, False, True])}
    out, stats = add_pseudo_labels(recs, labels, weight=0.25, max_nme=0.08)
    assert (stats.records, stats.labelled, stats.accepted) == (3, 2, 1)
    filled = w == 0
    assert stats.points == int(filled.sum())
    r0 = out[0]
    np.testing.assert_allclose(r0.weights[filled], 0.25)
    np.testing.assert_array_equal(r0.weights[~filled], w[~filled])  # manual weights untouched
    np.testing.assert_allclose(r0.landmarks[filled], extend_landmarks_np(pseudo[0])[filled], atol=1e-4)
    np.testing.assert_array_equal(r0.landmarks[~filled], recs[0].landmarks[~filled])  # manual points kept
    assert out[1] is recs[1] and out[2] is recs[2]  # rejected / not found: unchanged
    assert recs[0].weights[filled].max() == 0  # inputs are not modified


def test_add_pseudo_labels_gate_scales_with_face_size():
    rng = np.random.default_rng(1)
    truth = _face(rng, 1)
    w = np.ones(N_LANDMARKS)
    w[:17] = 0.0
    size = math.sqrt(np.prod(np.ptp(extend_landmarks_np(truth[0])[w > 0], axis=0)))
    labels = {"names": np.array(["f0.jpg"]), "found": np.array([True])}
    for offset, accepted in ((0.07, 1), (0.09, 0)):  # a uniform shift of offset x face size
        labels["landmarks"] = (truth + np.array([offset * size, 0.0])).astype(np.float32)
        _, stats = add_pseudo_labels([_record("f0.jpg", truth[0], w)], labels, max_nme=0.08)
        assert stats.accepted == accepted, offset


def test_add_pseudo_labels_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="weight"):
        add_pseudo_labels([], {"names": [], "landmarks": np.zeros((0, 68, 2)), "found": []}, weight=0.0)
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        add_pseudo_labels([], {"names": [], "landmarks": np.zeros((0, 21, 2)), "found": []})
    with pytest.raises(FileNotFoundError, match="pseudo_label.py"):
        load_pseudo_labels(tmp_path / "missing.npz")
    np.savez(tmp_path / "old.npz", names=np.array(["a"]), landmarks=np.zeros((1, 68, 2)), found=np.array([True]))
    with pytest.raises(ValueError, match="mesh"):
        load_pseudo_labels(tmp_path / "old.npz", mapping=DEFAULT_MAP)


def test_fit_map_recovers_a_planted_convex_correspondence(tmp_path):
    rng = np.random.default_rng(2)
    n = 300
    mesh = rng.uniform(0, 200, (1, 478, 2)) + rng.normal(0, 4.0, (n, 478, 2))  # faces = jittered point clouds
    true = []
    for j in range(68):
        # Each iBUG point: a fixed blend of a point and two of its nearest neighbours (in the mean layout).
        d = np.linalg.norm(mesh.mean(0) - mesh.mean(0)[j * 7], axis=1)
        idx = np.argsort(d)[:3]
        true.append([(int(idx[0]), 0.6), (int(idx[1]), 0.3), (int(idx[2]), 0.1)])
    target = apply_map(mesh, true)
    fitted = fit_map(mesh, target, k=6)
    for pairs in fitted:
        assert all(w >= 0 for _, w in pairs) and abs(sum(w for _, w in pairs) - 1) < 1e-6
    np.testing.assert_allclose(map_matrix(fitted), map_matrix(true), atol=0.02)
    assert point_errors(mesh, target, fitted).max() < 1e-3
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"points": [[[i, w] for i, w in p] for p in fitted]}))
    np.testing.assert_allclose(map_matrix(load_map(path)), map_matrix(fitted))


def test_load_map_validates_and_fixed_map_matches_pseudo_label(tmp_path):
    from training.pseudo_label import to_ibug68

    pts = np.random.default_rng(3).normal(size=(478, 3))
    np.testing.assert_allclose(apply_map(pts[None], fixed_map())[0], to_ibug68(pts), atol=1e-12)
    bundled = load_map(DEFAULT_MAP)
    assert len(bundled) == 68
    path = tmp_path / "bad.json"
    bad = (([[[0, 1.0]]] * 3, "68 points"), ([[[0, 0.5]]] * 68, "sum"), ([[[478, 1.0]]] * 68, "indices"))
    for points, message in bad:
        path.write_text(json.dumps({"points": points}))
        with pytest.raises(ValueError, match=message):
            load_map(path)


def test_mapping_is_applied_to_stored_mediapipe_points(tmp_path):
    rng = np.random.default_rng(4)
    mesh = rng.uniform(0, 100, (2, 478, 3)).astype(np.float32)
    np.savez(tmp_path / "x.npz", names=np.array(["a", "b"]), landmarks=np.zeros((2, 68, 2), np.float32),
             found=np.array([True, True]), mesh=mesh)
    fixed = load_pseudo_labels(tmp_path / "x.npz")
    np.testing.assert_array_equal(fixed["landmarks"], 0)  # the file's own correspondence
    mapped = load_pseudo_labels(tmp_path / "x.npz", mapping=DEFAULT_MAP)
    np.testing.assert_allclose(mapped["landmarks"], apply_map(mesh[..., :2], load_map(DEFAULT_MAP)), rtol=1e-5)
    assert "mesh" not in mapped


def test_train_config_checks_pseudo_options():
    TrainConfig(pseudo_sources=["aflw"], sources=["300w", "aflw"])
    with pytest.raises(ValueError, match="pseudo_sources"):
        TrainConfig(pseudo_sources=["utkface"], sources=["300w", "aflw"])
    with pytest.raises(ValueError, match="pseudo_weight"):
        TrainConfig(pseudo_weight=1.5)
    with pytest.raises(ValueError, match="pseudo_max_nme"):
        TrainConfig(pseudo_max_nme=0)


# ---------------------------------------------------------------------------------------------------------------------
# depth


def test_depth_loss_is_scale_and_offset_free_and_penalises_other_profiles():
    import torch

    from training.losses import depth_loss

    torch.manual_seed(0)
    t = torch.randn(3, 71)
    w = torch.ones(3, 71)
    w[2] = 0  # no depth for the last face
    pred = 2.5 * t + 7.0  # proportional (any scale and offset): no loss
    assert float(depth_loss(pred, t, w, 128)) < 1e-6
    other = torch.randn(3, 71)
    loss = depth_loss(other.requires_grad_(), t, w, 128)
    # Analytic value on the two faces that have targets.
    p = other.detach()[:2] - other.detach()[:2].mean(1, keepdim=True)
    c = t[:2] - t[:2].mean(1, keepdim=True)
    a = (p * c).sum(1, keepdim=True) / (c * c).sum(1, keepdim=True)
    assert float(loss.detach()) == pytest.approx(float((p - a * c).abs().mean() / 128), rel=1e-5)
    loss.backward()
    assert other.grad[2].abs().max() == 0 and other.grad[:2].abs().max() > 0
    # Flattening the prediction does not lower the loss below that of the proportional part.
    assert float(depth_loss(0.01 * other.detach(), t, w, 128)) == pytest.approx(float(loss.detach()) * 0.01, rel=1e-4)
    assert float(depth_loss(other.detach(), t, torch.zeros_like(w), 128)) == 0.0


def test_dataset_depth_follows_crop_scale_and_flip(tmp_path):
    from training.augment import Augmenter, GeometricParams
    from training.data import EXTENDED_MIRROR, RealFaceDataset

    rng = np.random.default_rng(5)
    img_path = tmp_path / "face.png"
    import cv2

    cv2.imwrite(str(img_path), rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
    lmk = _face(rng)[0]
    rec = _record(str(img_path), lmk, np.ones(N_LANDMARKS))
    rec = dataclasses.replace(rec, depth=np.arange(N_LANDMARKS, dtype=np.float32))
    plain = RealFaceDataset([rec], size=100)[0]
    np.testing.assert_allclose(plain["depth"].numpy(), np.arange(N_LANDMARKS) * 0.5, rtol=1e-6)
    assert plain["depth_weights"].min() == 1
    aug = Augmenter(100)
    fixed = GeometricParams(angle_deg=20.0, scale=1.25, flip=True)
    res = aug(cv2.imread(str(img_path))[:, :, ::-1].copy(), rec.box, rec.landmarks, rec.weights,
              np.random.default_rng(0), params=fixed)
    k = float(np.sqrt(abs(np.linalg.det(res.matrix[:, :2]))))
    assert k == pytest.approx(0.5 * 1.25, rel=1e-6) or k == pytest.approx(0.5 / 1.25, rel=1e-6)

    class Fixed(Augmenter):
        def sample_geometry(self, rng):
            return fixed

    flipped = RealFaceDataset([rec], size=100, augment=Fixed(100))[0]
    np.testing.assert_allclose(flipped["depth"].numpy(), np.array(EXTENDED_MIRROR) * k, rtol=1e-5)
    no_depth = RealFaceDataset([_record(str(img_path), lmk, np.ones(N_LANDMARKS))], size=100)[0]
    assert no_depth["depth_weights"].max() == 0


def test_mix_batches_gives_synthetic_faces_no_depth_target():
    import torch

    from training.synthetic import mix_batches

    real = {"image": torch.zeros(2, 3, 8, 8), "landmarks": torch.zeros(2, 71, 2), "weights": torch.ones(2, 71),
            "depth": torch.ones(2, 71), "depth_weights": torch.ones(2, 71)}
    synth = {"image": torch.zeros(3, 3, 8, 8), "landmarks": torch.zeros(3, 71, 2), "weights": torch.ones(3, 71),
             "vertices": torch.zeros(3, 5, 3), "has_vertices": torch.ones(3, dtype=torch.bool),
             "rotation": torch.eye(3).expand(3, 3, 3)}
    out = mix_batches(real, synth)
    assert out["depth"].shape == (5, 71) and out["depth_weights"][:2].min() == 1
    assert out["depth_weights"][2:].max() == 0


def test_pseudo_jaw_only_on_faces_turned_up_to_the_limit_and_jaw_depth_dropped(tmp_path):
    import cv2

    from training.data import JAW_POINTS, RealFaceDataset

    rng = np.random.default_rng(3)
    truth = _face(rng, 3)
    w = np.zeros(N_LANDMARKS)
    w[[17, 19, 21, 22, 24, 26, 36, 39, 42, 45, 30, 48, 54, 8]] = 1.0
    recs = [dataclasses.replace(_record(f"f{i}.jpg", truth[i], w), yaw=y) for i, y in enumerate((10.0, -50.0))]
    recs.append(dataclasses.replace(_record("f2.jpg", truth[2], w), source="300w", yaw_estimate=20.0))
    labels = {"names": np.array(["f0.jpg", "f1.jpg", "f2.jpg"]), "landmarks": truth.astype(np.float32),
              "found": np.ones(3, bool), "depth": rng.normal(0, 5, (3, 68)).astype(np.float32)}
    out, _ = add_pseudo_labels(recs, labels, weight=0.5, jaw_max_yaw=30.0, jaw_depth=False)
    jaw = np.zeros(N_LANDMARKS, bool)
    jaw[JAW_POINTS] = True
    fill = (w == 0) & ~jaw
    assert (out[0].weights[jaw & (w == 0)] == 0.5).all() and (out[2].weights[jaw & (w == 0)] == 0.5).all()
    assert (out[1].weights[jaw & (w == 0)] == 0).all() and (out[1].weights[fill] == 0.5).all()  # |yaw| 50 > 30
    assert out[1].weights[8] == 1.0  # a manual chin stays
    for r in out:
        assert np.isnan(r.depth[jaw]).all() and np.isfinite(r.depth[~jaw]).all()
    default, _ = add_pseudo_labels(recs, labels, weight=0.5)
    assert (default[1].weights[jaw & (w == 0)] == 0.5).all() and np.isfinite(default[1].depth).all()
    # The dataset turns NaN depth into "no target" at those points.
    img_path = tmp_path / "f.png"
    cv2.imwrite(str(img_path), rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
    item = RealFaceDataset([dataclasses.replace(out[0], image_path=img_path)], size=100)[0]
    assert item["depth_weights"][jaw].max() == 0 and item["depth_weights"][~jaw].min() == 1
    assert np.isfinite(item["depth"].numpy()).all()
    with pytest.raises(ValueError, match="pseudo_jaw_max_yaw"):
        TrainConfig(pseudo_jaw_max_yaw=-1.0)


def test_ear_anchored_jaw_moves_only_the_jaw_symmetrically(tiny_model):
    from training.fit_landmarks import CHIN_POINT, ear_anchored_jaw, jaw_depth_taper

    assert [jaw_depth_taper(i) for i in (0, 2, 4, 5, 6, 7, 8, 12, 16)] == [1, 1, 1, 0.75, 0.5, 0.25, 0, 1, 1]
    try:
        index, report = ear_anchored_jaw(tiny_model, limit=8, batch_size=8)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    m = tiny_model.morphable
    assert torch.equal(index[17:], m.landmark_index[17:]) and index[CHIN_POINT] == m.landmark_index[CHIN_POINT]
    assert all(int(index[16 - i]) == int(m.vertex_mirror[index[i]]) for i in range(17))
    assert report["train_faces"] == 8 and report["ear_error_train_after"] <= report["ear_error_train_before"]
    assert len(report["jaw_moved_mm"]) == 17 and report["jaw_moved_mm"][CHIN_POINT] == 0.0


def test_near_side_jaw_refits_only_the_jaw_side_points_symmetrically(tiny_model):
    from training.fit_landmarks import CHIN_POINT, EAR_POINTS, near_side_jaw

    try:
        index, report = near_side_jaw(tiny_model, limit=8, batch_size=8, min_yaw=0.0, min_turn_deg=0.0)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    m = tiny_model.morphable
    kept = list(range(17, 68)) + [CHIN_POINT, *EAR_POINTS]
    assert torch.equal(index[kept], m.landmark_index[kept])
    assert all(int(index[16 - i]) == int(m.vertex_mirror[index[i]]) for i in range(17))
    assert report["train_faces"] == 8 and report["jaw_error_train_after"] <= report["jaw_error_train_before"]
    assert report["points"] == [0, 1, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 15, 16]
    assert report["jaw_moved_mm"][CHIN_POINT] == 0.0 and len(report["per_point_val_after"]) == 14

