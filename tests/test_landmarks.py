"""Landmark definitions: fitting maths, the bundled refined definition, file checks, training overrides."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facerecon.morphable.landmarks import ICT_LANDMARKS, load_landmark_index, save_landmark_index
from training.fit_landmarks import accumulate_costs, candidate_vertices, choose_symmetric


def test_candidate_vertices_radius_and_order():
    mean = torch.tensor([[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [0, 2.5, 0]])
    cand = candidate_vertices(mean, torch.tensor([0, 2]), radius=2.6)
    assert cand.tolist() == [[0, 1, 3], [2, 1, -1]]  # nearest first, -1 pads


def test_accumulate_costs_analytic():
    pts = torch.tensor([[[0.0, 0.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 0.0]]])  # (B=2, N=2, 2)
    targets = torch.zeros(2, 1, 2)
    cand = torch.tensor([[0, 1]])
    sums, counts = accumulate_costs(pts, targets, torch.tensor([[1.0], [0.0]]), torch.tensor([2.0, 1.0]), cand)
    # Face 1 is not annotated; face 0: distances 0 and 5, normalised by 2.
    assert torch.allclose(sums, torch.tensor([[0.0, 2.5]])) and counts.tolist() == [1.0]


def test_choose_symmetric_picks_pairs_jointly_and_midline_self_mirrored():
    # Vertices on a line x = -2..2 (index 0..4), mirror i <-> 4 - i; landmarks: left (0), middle (1), right (2).
    vertex_mirror = torch.tensor([4, 3, 2, 1, 0])
    landmark_mirror = torch.tensor([2, 1, 0])
    cand = torch.tensor([[0, 1], [1, 2], [3, 4]])
    # Alone, landmark 0 prefers vertex 0 and landmark 2 prefers vertex 3; jointly (0, 4) costs 0.1 + 0.9 = 1.0 and
    # (1, 3) costs 0.3 + 0.2 = 0.5, so the pair (1, 3) wins. The middle prefers vertex 1 but only 2 is self-mirrored.
    cost = torch.tensor([[0.1, 0.3], [0.0, 0.5], [0.2, 0.9]])
    out = choose_symmetric(cost, cand, landmark_mirror, vertex_mirror)
    assert out.tolist() == [1, 2, 3]
    assert torch.equal(out[landmark_mirror], vertex_mirror[out])


def test_landmark_file_round_trip_and_checks(tmp_path):
    faces = torch.tensor([[0, 1, 2], [1, 2, 3]])
    index = torch.arange(68) % 4
    path = save_landmark_index(tmp_path / "lm.json", index, "face", faces, 4, {"note": "test"})
    assert torch.equal(load_landmark_index(path, "face", faces, 4), index)
    assert load_landmark_index(ICT_LANDMARKS, "face", faces, 4) is None
    with pytest.raises(ValueError, match="topology"):
        load_landmark_index(path, "face", torch.tensor([[0, 2, 1], [1, 2, 3]]), 4)
    with pytest.raises(ValueError, match="surface"):
        load_landmark_index(path, "head", faces, 4)
    with pytest.raises(FileNotFoundError, match="refined-v1"):
        load_landmark_index("no-such-definition", "face", faces, 4)
    bad = json.loads(path.read_text())
    bad["landmark_index"] = bad["landmark_index"][:10]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="68 vertex indices"):
        load_landmark_index(tmp_path / "bad.json", "face", faces, 4)


def test_bundled_refined_landmarks_are_mirror_consistent(tiny_model, make_config):
    from facerecon.models.facerecon import FaceRecon

    torch.manual_seed(0)
    refined = FaceRecon(make_config(landmarks="refined-v1")).eval()
    m, ict = refined.morphable, tiny_model.morphable
    assert torch.equal(m.landmark_index[m.landmark_mirror], m.vertex_mirror[m.landmark_index])
    moved = (m.mean[m.landmark_index] - ict.mean[ict.landmark_index]).norm(dim=-1)
    assert 1.0 < float(moved.mean()) < 10.0 and float(moved.max()) <= 20.0  # mm, within the fitting radius
    refined.load_state_dict(tiny_model.state_dict(), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out, lmk_only = refined(x), refined(x, landmarks_only=True)
    expected = refined.project(out.vertices[:, m.landmark_index], out.params.scale)
    assert torch.allclose(out.landmarks_2d, expected, atol=1e-4)
    assert torch.allclose(lmk_only.landmarks_2d, expected, atol=1e-3)


def test_reweight_turned_jaw_copies_records():
    from training.data import JAW_YAW_THRESHOLD_DEG, FaceSample, reweight_turned_jaw

    def rec(source, yaw):
        return FaceSample(source=source, name="x", image_path="x", box=np.zeros(4), landmarks=np.zeros((71, 2)),
                          weights=np.ones(71, np.float32), yaw_estimate=yaw)

    recs = [rec("300w", JAW_YAW_THRESHOLD_DEG + 5), rec("300w", 5.0), rec("aflw", float("nan"))]
    out = reweight_turned_jaw(recs, 0.0)
    assert out[0].weights[:17].sum() == 0 and out[0].weights[17:].min() == 1
    assert out[1].weights.min() == 1 and out[2] is recs[2]
    assert recs[0].weights.min() == 1  # the input is untouched
    with pytest.raises(ValueError, match=">= 0"):
        reweight_turned_jaw(recs, -1.0)


def test_reweight_turned_jaw_far_side_keeps_the_near_side_and_chin():
    from training.data import FaceSample, far_jaw_points, reweight_turned_jaw

    def rec(yaw):
        return FaceSample(source="300w", name="x", image_path="x", box=np.zeros(4), landmarks=np.zeros((71, 2)),
                          weights=np.ones(71, np.float32), yaw_estimate=yaw)

    # Positive yaw turns the subject's left (points 9-16) towards the camera: 0-7 are hidden.
    assert far_jaw_points(20.0) == slice(0, 8) and far_jaw_points(-20.0) == slice(9, 17)
    left, right, small = reweight_turned_jaw([rec(40.0), rec(-40.0), rec(10.0)], 0.25, side="far", min_yaw=15.0)
    assert np.allclose(left.weights[:8], 0.25) and left.weights[8:].min() == 1
    assert np.allclose(right.weights[9:17], 0.25) and right.weights[:9].min() == 1 and right.weights[17:].min() == 1
    assert small.weights.min() == 1  # |yaw| <= min_yaw: not turned
    with pytest.raises(ValueError, match="side"):
        reweight_turned_jaw([rec(40.0)], 0.0, side="near")


def test_near_side_mask_follows_the_turned_axis():
    import math

    from training.fit_landmarks import near_side_mask

    side = torch.tensor([-1.0, 1.0])  # a point on the subject's right (-x) and one on the left (+x)
    # A rotation about the vertical axis by +30 deg brings +x towards the viewer (+z): the left side is near.
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rot = torch.tensor([[[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]])
    rot = rot.transpose(1, 2)  # R @ (1, 0, 0) = (c, 0, s)
    assert near_side_mask(rot, side, 15.0).tolist() == [[False, True]]
    assert near_side_mask(rot.transpose(1, 2), side, 15.0).tolist() == [[True, False]]
    assert near_side_mask(rot, side, 35.0).tolist() == [[False, False]]  # turned 30 deg, not 35
    assert near_side_mask(torch.eye(3)[None], side, 0.0).tolist() == [[False, False]]  # frontal: neither side


def test_build_model_overrides_loaded_config(tiny_model, tmp_path):
    from training.config import TrainConfig
    from training.train import build_model

    tiny_model.save_pretrained(tmp_path / "m")
    model = build_model(TrainConfig(init_from=str(tmp_path / "m"), model={"landmarks": "refined-v1"}))
    assert model.config.landmarks == "refined-v1"
    assert not torch.equal(model.morphable.landmark_index, tiny_model.morphable.landmark_index)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    model.save_pretrained(tmp_path / "m2")
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["landmarks"] == "refined-v1"


def test_fit_landmarks_keep_jaw_moves_only_points_17_to_67(tiny_model, monkeypatch):
    import training.fit_landmarks as fl

    m = tiny_model.morphable
    current = m.landmark_index
    # One "face": the mean shape seen from the front, annotated 3 mm below every current landmark vertex.
    pts = m.mean[None, :, :2]
    targets = pts[:, current] - torch.tensor([0.0, 3.0])
    batch = (pts, targets, torch.ones(1, 68), torch.tensor([100.0]), torch.eye(3)[None])
    monkeypatch.setattr(fl, "_records", lambda *a, **k: ["face"])
    monkeypatch.setattr(fl, "_batches", lambda *a, **k: iter([batch]))
    full, _ = fl.fit_landmarks(tiny_model, radius=6.0)
    kept, report = fl.fit_landmarks(tiny_model, radius=6.0, keep_jaw=True)
    assert not torch.equal(full[:17], current[:17])  # the plain fit would move the jaw too
    assert torch.equal(kept[:17], current[:17]) and torch.equal(kept[17:], full[17:])
    assert torch.equal(kept[m.landmark_mirror], m.vertex_mirror[kept])
    assert report["method"] == "frontal_keep_jaw"
    assert report["val_point_error_after"] < report["val_point_error_before"]
