"""training.evaluate on 8 AFLW2000-3D dev images (protocol pieces and the end-to-end command)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.evaluate import (
    REGIONS,
    SUBJECT_RIGHT,
    angle_error,
    evaluate_aflw2000,
    load_aflw2000,
    main,
    markdown_table,
    nme_68,
    rotation_angle_deg,
    rotation_error_deg,
    scale_shift_aligned,
    signed_angle_difference,
    signed_offsets,
    similarity_aligned,
    ssim_map,
)

DEV = Path(__file__).resolve().parents[1].parent / "shared" / "aflw2000-3d-dev"


@pytest.fixture(scope="module")
def items():
    if not DEV.is_dir():
        pytest.skip(f"{DEV} not found")
    return load_aflw2000(DEV, limit=8)


def test_loader_conventions(items):
    assert len(items) == 8 and items[0].name == "image00002"
    it = items[0]
    assert it.landmarks.shape == (68, 2)
    # 0-based pixel centres inside the 450 x 450 photo; the image-left eye corner is left of the right one.
    assert (it.landmarks >= -1).all() and (it.landmarks < 450).all()
    assert it.landmarks[36, 0] < it.landmarks[45, 0]
    assert it.yaw == pytest.approx(1.0443, abs=1e-3) and it.yaw_bin == 0
    assert it.pose_valid
    assert not dataclasses.replace(it, raw_angles=(10.0, -100.0, 0.0)).pose_valid


def test_rotation_error_is_geodesic():
    pred = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 20.0, -5.0], [90.0, 20.0, 0.0], [-90.0, 20.0, 0.0]])
    target = torch.tensor([[0.0, 0.0, 0.0], [-5.0, 0.0, 0.0], [0.0, 20.0, -5.0], [90.0, 30.0, 10.0],
                           [-90.0, 30.0, 10.0]])
    err = rotation_error_deg(pred, target)
    assert err.shape == (5,)
    # Single-axis differences are exact; at |yaw| = 90 only pitch -/+ roll is defined: (90, 20, 0) and (90, 30, 10)
    # are the same rotation (Euler errors 10 + 10 deg), while at yaw -90 the same change is a 20 deg rotation.
    assert err.tolist() == pytest.approx([0.0, 15.0, 0.0, 0.0, 20.0], abs=1e-4)
    with pytest.raises(ValueError, match="Euler"):
        rotation_error_deg(pred[:, :2], target[:, :2])


def test_rotation_angle_of_matrices_is_the_relative_angle():
    from facerecon.geometry import euler_to_matrix

    ra = euler_to_matrix(torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.2, 0.1], [1.5, 0.0, 0.0]], dtype=torch.float64))
    rb = euler_to_matrix(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.2, 0.1], [1.5, 0.0, -0.4]], dtype=torch.float64))
    assert rotation_angle_deg(ra, rb).tolist() == pytest.approx([math.degrees(0.3), 0.0, math.degrees(0.4)], abs=1e-6)
    with pytest.raises(ValueError, match="rotation tensors"):
        rotation_angle_deg(ra[:, :2], rb[:, :2])


def test_metric_helpers():
    gt = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 40.0], [0.0, 40.0]])
    assert nme_68(gt + [3.0, 4.0], gt) == pytest.approx(5.0 / 20.0)
    assert angle_error(179.0, -179.0) == pytest.approx(2.0)
    assert signed_angle_difference(179.0, -179.0) == pytest.approx(-2.0)
    a = 0.4
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    assert np.allclose(similarity_aligned(1.7 * gt @ rot.T + [5.0, -2.0], gt), gt)
    assert nme_68(similarity_aligned(gt[[1, 0, 3, 2]], gt), gt) > 0.1  # a mirror image is not a similarity
    assert np.allclose(scale_shift_aligned(1.7 * gt + [5.0, -2.0], gt), gt)
    assert nme_68(scale_shift_aligned(1.7 * gt @ rot.T + [5.0, -2.0], gt), gt) > 0.05  # it does not undo a rotation
    from facerecon.morphable.ict import MIRROR_68

    g68 = np.random.default_rng(0).normal(size=(68, 2)) * 10.0
    shift = np.zeros((68, 2))
    shift[0] = [2.0, 1.0]  # point 0 moved right / down
    size = math.sqrt(float(np.prod(g68.max(0) - g68.min(0))))
    assert np.allclose(signed_offsets(g68 + shift, g68, 10.0), shift / size)
    assert len(SUBJECT_RIGHT) == len(set(SUBJECT_RIGHT)) == 29
    assert not set(SUBJECT_RIGHT) & {MIRROR_68[i] for i in SUBJECT_RIGHT}  # the two halves are disjoint
    mirrored = signed_offsets(g68 + shift, g68, -10.0)  # yaw < 0: point 0 becomes its partner, x flipped
    assert np.allclose(mirrored[MIRROR_68[0]], [-2.0 / size, 1.0 / size]) and np.abs(mirrored).sum() == pytest.approx(
        3.0 / size)
    assert signed_angle_difference(-179.0, 179.0) == pytest.approx(2.0)
    assert signed_angle_difference(10.0, 30.0) == pytest.approx(-20.0)
    assert np.allclose(signed_angle_difference(np.array([179.0, 10.0]), np.array([-179.0, 30.0])), [-2.0, -20.0])
    x = torch.rand(1, 3, 32, 32)
    assert float(ssim_map(x, x).mean()) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim_map(x, torch.rand(1, 3, 32, 32)).mean()) < 0.3


@pytest.mark.timeout(600)
def test_evaluate_command_on_8_images(items, tiny_model, tmp_path):
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    out = tmp_path / "eval.json"
    res = main(["--model", str(model_dir), "--data", str(DEV), "--limit", "8", "--json", str(out),
                "--synthetic", "8", "--threads", "2"])
    saved = json.loads(out.read_text())
    assert saved["aflw2000"]["n_images"] == 8
    bins = saved["aflw2000"]["nme_bins"]
    assert sum(b["n"] for b in bins.values()) == 8
    assert math.isfinite(saved["aflw2000"]["nme_balanced"]) and saved["aflw2000"]["nme_balanced"] > 0
    pose = saved["aflw2000"]["pose_mae_deg"]
    assert all(math.isfinite(pose[k]) for k in ("yaw", "pitch", "roll"))
    assert 0.0 <= pose["geodesic"] <= 180.0
    per_bin = saved["aflw2000"]["pose_bins"]
    assert sum(v["n"] for v in per_bin.values()) == pose["n"]
    # The overall means are the count-weighted means of the per-bin ones.
    for k in ("yaw", "geodesic"):
        weighted = sum(v[k] * v["n"] for v in per_bin.values() if v["n"]) / pose["n"]
        assert weighted == pytest.approx(pose[k])
    assert 0.0 <= saved["detection"]["all"] <= 1.0
    assert -1.0 <= saved["aflw2000"]["ssim"] <= 1.0
    assert saved["synthetic"]["n"] == 8 and saved["synthetic"]["vertex_error_mm"] > 0
    assert 0.0 < saved["synthetic"]["rotation_error_deg"] <= 180.0 and 0 <= saved["synthetic"]["n_turned"] <= 8
    assert saved["timing"]["model_forward_ms"] > 0
    pipe = saved["pipeline"]
    assert pipe["refine_steps"] == 2 and len(pipe["per_image"]) == 8 and 0.0 <= pipe["found"] <= 1.0
    for k, (label, b) in enumerate(pipe["nme_bins"].items()):  # bins are the means of their faces' rows
        found = [r["nme"] for r in pipe["per_image"] if r["bin"] == k and r["nme"] is not None]
        assert b["n"] == len(found) and (not found or b["nme"] == pytest.approx(np.mean(found))), label
    row = next((r for r in pipe["per_image"] if r["nme"] is not None), None)
    if row is not None:  # the row is the NME of what Reconstructor returns for that photo
        from facerecon.inference.pipeline import Reconstructor

        it = next(i for i in items if i.name == row["name"])
        faces = Reconstructor(tiny_model)(it.image_path)
        assert any(nme_68(f.landmarks, it.landmarks) == pytest.approx(row["nme"], rel=1e-4) for f in faces)
    found = {r["name"] for r in pipe["per_image"] if r["nme"] is not None}
    for k, (label, v) in enumerate(pipe["protocol_nme_bins"].items()):  # the protocol's rows of the found faces
        same = [p["nme"] for p in saved["aflw2000"]["per_image"] if p["bin"] == k and p["name"] in found]
        assert (not same and math.isnan(v)) or v == pytest.approx(np.mean(same)), label
    assert "Pipeline NME with detection" in markdown_table(saved)
    assert "Protocol NME on the faces the pipeline found" in markdown_table(saved)
    assert res["aflw2000"]["nme_all"] == pytest.approx(saved["aflw2000"]["nme_all"])
    for p in saved["aflw2000"]["per_image"]:  # regions partition the 68 points; alignment only lowers the error
        assert sum(len(REGIONS[r]) * v for r, v in p["regions"].items()) / 68 == pytest.approx(p["nme"])
        assert p["nme_aligned"] <= p["nme"] + 1e-9
        assert 0 < p["nme_far_side"] and 0 < p["nme_near_side"]
    assert "NME jaw / brows / nose / eyes / mouth" in markdown_table(saved)
    offsets = [np.array(b["mean_offsets"]) for b in bins.values() if b["n"]]
    assert all(o.shape == (68, 2) and np.isfinite(o).all() for o in offsets)
    flipped = main(["--model", str(model_dir), "--data", str(DEV), "--limit", "8", "--flip-test",
                    "--skip", "detection", "pipeline", "ssim", "synthetic", "timing", "fairness"])
    assert flipped["flip_test"] and flipped["aflw2000"]["n_images"] == 8
    assert flipped["aflw2000"]["nme_all"] != pytest.approx(res["aflw2000"]["nme_all"], rel=1e-6)
    shifted = main(["--model", str(model_dir), "--data", str(DEV), "--limit", "8", "--flip-test", "--shift-test",
                    "--skip", "detection", "pipeline", "synthetic", "timing", "fairness"])
    assert shifted["shift_test"] and shifted["aflw2000"]["n_images"] == 8
    assert shifted["aflw2000"]["nme_all"] != pytest.approx(flipped["aflw2000"]["nme_all"], rel=1e-6)
    assert -1.0 <= shifted["aflw2000"]["ssim"] <= 1.0 and "Shift test" in markdown_table(shifted)


def test_model_card_from_results(tmp_path, monkeypatch):
    import yaml

    from training.model_card import render_card

    ev = {"aflw2000": {"nme_bins": {"[0, 30]": {"nme": 0.03, "n": 3}, "(30, 60]": {"nme": 0.04, "n": 2},
                                    "(60, 90]": {"nme": 0.05, "n": 1}},
                       "nme_balanced": 0.04, "pose_mae_deg": {"yaw": 1.0, "pitch": 2.0, "roll": 3.0, "mean": 2.0,
                                                              "n": 6}, "ssim": 0.5},
          "synthetic": {"vertex_error_mm": 2.5, "n": 8}}
    card = render_card(ev, {"step": 10, "val": {"nme": 0.05}, "config": {"model": {"backbone": "x"}}}, "cmd")
    header = yaml.safe_load(card.split("---")[1])
    assert header["pipeline_tag"] == "image-to-3d" and header["license"] == "apache-2.0"
    values = {m["name"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert values["NME balanced (%), 68 points, AFLW2000-3D dev"] == 4.0
    assert "research and non-commercial use only" in card and "MIT" in card
    assert "flip test" not in card
    plain = {"aflw2000": {"nme_balanced": 0.05, "pose_mae_deg": {"mean": 2.5}}, "flip_test": False}
    cfg = {"model": {"backbone": "x", "landmarks": "refined-v3"}, "pseudo_sources": ["aflw"], "pseudo_jaw_max_yaw": 30,
           "pseudo_jaw_depth": False, "loss": {"yaw": 0.2}}
    flipped = render_card(dict(ev, flip_test=True), {"config": cfg}, "cmd --flip-test", plain=plain)
    assert "Measured with the flip test" in flipped and "| NME balanced / pose MAE mean, single pass (no flip, " \
        "shift or orientation test) | 5.00 / 2.50 |" in flipped and "With the shift test" not in flipped
    shifted = render_card(dict(ev, flip_test=True, shift_test=True), {"config": cfg}, "cmd",
                          plain=dict(plain, flip_test=True))
    assert "With the shift test (`--shift-test`" in shifted and "mean, with the flip test | 5.00 / 2.50 |" in shifted
    assert "orientation test (`--orientation-test`" not in shifted
    assert "the crop and four crops shifted by 7 % of its side" in shifted and "5x the regressor's cost (10x" in shifted
    views = ((1.0, 0.0, 0.0), (1.0, 0.05, 0.0), (1.0, -0.05, 0.0))
    monkeypatch.setattr("facerecon.models.facerecon.SHIFT_TEST_VIEWS", views)
    two = render_card(dict(ev, flip_test=True, shift_test=True), {"config": cfg}, "cmd")
    assert "the crop and two crops shifted by 5 % of its side" in two and "3x the regressor's cost (6x" in two
    oriented = render_card(dict(ev, flip_test=True, shift_test=True, orientation_test=True), {"config": cfg}, "cmd",
                           plain=dict(plain, flip_test=True, orientation_test=True))
    assert "With the orientation test (`--orientation-test`" in oriented
    assert "mean, with the flip + orientation test | 5.00 / 2.50 |" in oriented
    pipe = {"refine_steps": 2, "nme_balanced": 0.054, "found": 0.95,
            "nme_bins": {"[0, 30]": {"nme": 0.035}, "(30, 60]": {"nme": 0.055}, "(60, 90]": {"nme": 0.072}}}
    assert "with detection (not the protocol's crop), balanced (%; per bin) | 5.40 (3.50 / 5.50 / 7.20; 95.0% of" \
        in render_card(dict(ev, pipeline=pipe), {"config": cfg}, "cmd") and "whole pipeline" not in card
    pipe["protocol_nme_bins"] = {"[0, 30]": 0.034, "(30, 60]": 0.047, "(60, 90]": 0.06}
    assert "of the faces found; protocol on the same faces 3.40 / 4.70 / 6.00) |" \
        in render_card(dict(ev, pipeline=pipe), {"config": cfg}, "cmd")
    assert "|yaw| <= 30 deg, without jaw depth" in flipped and "ear-lobe labels" in flipped and "Yaw: AFLW" in flipped
    assert "Pose pseudo-labels" not in flipped and "about 17 mm behind" in flipped
    v4 = render_card(ev, {"config": dict(cfg, model={"landmarks": "refined-v4"})}, "cmd")
    assert "`refined-v4`" in v4 and "about 21 mm" in v4 and "tapering to the chin" in v4
    assert "Turned 300-W faces" not in v4
    near = render_card(ev, {"config": dict(cfg, model={"landmarks": "refined-v5"}, jaw_turned_side="far",
                                           jaw_turned_min_yaw=15.0, jaw_turned_weight=0.0)}, "cmd")
    assert "camera-facing side of turned 300-W training faces" in near and "tapering" not in near
    assert "Turned 300-W faces (|yaw| > 15 deg): the jaw points on the side turned away" in near
    assert "Per-source" not in near
    per = render_card(ev, {"config": dict(cfg, source_landmarks={"aflw": "training/assets/aflw-landmarks-v1.json"})},
                      "cmd")
    assert "Per-source landmark vertices: the annotations of aflw are compared with vertices fitted" in per
    assert "`training/assets/aflw-landmarks-v1.json`" in per
    posed = render_card(ev, {"config": dict(cfg, loss={"yaw": 0.2, "pseudo_pose": 0.3})}, "cmd")
    assert "Pose pseudo-labels: the rotation of the rigid fit" in posed and "pseudo_pose 0.3" in posed
    assert "| **NME balanced (%)** | **4.00** |" in card
    assert "geodesic" not in card.split("Protocol:")[0]
    bins = {"[0, 30]": {"geodesic": 2.0}, "(30, 60]": {"geodesic": 3.0}, "(60, 90]": {"geodesic": 9.5}}
    aflw = dict(ev["aflw2000"], pose_mae_deg=dict(ev["aflw2000"]["pose_mae_deg"], geodesic=3.25), pose_bins=bins)
    geo = render_card(dict(ev, aflw2000=aflw), {"config": {}}, "cmd")
    assert "| Rotation error, geodesic (deg): all (per yaw bin) | 3.25 (2.00 / 3.00 / 9.50) |" in geo


def test_fairness_slice_per_group(tiny_model, astronaut, tmp_path):
    import cv2

    from training.evaluate import evaluate_fairness, fairness_table

    (tmp_path / "images").mkdir()
    face = cv2.resize(astronaut[20:220, 160:360], (200, 200))
    rows, names = ["name,age,gender,race,datetime"], []
    for i, (race, gender) in enumerate([(0, 0), (0, 1), (1, 0), (2, 1), (1, 1)]):
        name = f"{30 + i}_{gender}_{race}_2017.jpg.chip.jpg"
        cv2.imwrite(str(tmp_path / "images" / name), face[:, :, ::-1])
        rows.append(f"{name},{30 + i},{gender},{race},2017")
        names.append(name)
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    # A plausible 68-point layout: the model's mean-face landmarks mapped into the 200 px image.
    with torch.no_grad():
        lmk = tiny_model(torch.zeros(1, 3, 64, 64)).landmarks_2d[0].numpy() * (120 / 64) + 40
    labels = np.repeat(lmk[None], 5, axis=0).astype(np.float32)
    found = np.array([True, True, True, True, False])  # the last face was not labelled
    np.savez(tmp_path / "labels.npz", names=np.array(names), landmarks=labels, found=found)
    fair = evaluate_fairness(tiny_model, tmp_path, tmp_path / "labels.npz", with_detection=False)
    assert fair["all"]["n"] == 4 and fair["race"]["white"]["n"] == 2 and fair["race"]["black"]["n"] == 1
    assert fair["race"]["black"]["not_labelled"] == 1 and fair["race"]["indian"]["n"] == 0
    white = [p["nme"] for p in fair["per_face"] if p["race"] == "white"]
    assert fair["race"]["white"]["nme"] == pytest.approx(np.mean(white))
    # Identical images and labels: every face gets the same NME, so the race gap is 0.
    assert all(p["nme"] == pytest.approx(white[0]) for p in fair["per_face"]) and fair["race_nme_gap"] < 1e-9
    assert 0 < white[0] < 1 and math.isnan(fair["all"]["detection_rate"])
    assert "| race: white | 2 |" in fairness_table(fair)


class _ConstantFeatures(torch.nn.Module):
    """Backbone stand-in whose features do not depend on the image (so the regressed parameters are constant)."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, x):
        if isinstance(self.features, (list, tuple)):
            return [f.expand(len(x), *f.shape[1:]) for f in self.features]
        return self.features.expand(len(x), *self.features.shape[1:])


def test_ground_truth_rotation_diagnosis_is_exact_when_only_the_rotation_is_wrong(items, tiny_model):
    """nme_gt_rotation: ground truth made from the model's own shape with the Pose_Para rotation gives ~0 error."""
    import copy

    from facerecon.geometry import euler_to_matrix

    model = copy.deepcopy(tiny_model).eval()
    size = model.config.input_size
    with torch.no_grad():
        model.backbone = _ConstantFeatures(model.backbone(torch.zeros(1, 3, size, size)))
        params = model(torch.zeros(len(items), 3, size, size), landmarks_only=True).params
        gt_rot = euler_to_matrix(torch.deg2rad(torch.tensor([[it.yaw, it.pitch, it.roll] for it in items])))
        truth = model.decode(dataclasses.replace(params, rotation=gt_rot), landmarks_only=True).landmarks_2d
    # Any placement of those points: the crop is a scale + shift of the image, which the diagnosis refits.
    faked = [dataclasses.replace(it, landmarks=3.0 * truth[k].double().numpy() + 40.0) for k, it in enumerate(items)]
    res = evaluate_aflw2000(model, faked, with_ssim=False)
    for p in res["per_image"]:
        assert p["nme_gt_rotation"] < 1e-4 < p["nme_scale_shift"] <= p["nme"] + 1e-9
    assert "ground-truth rotation" in markdown_table({"aflw2000": res})
