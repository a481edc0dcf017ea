"""Training: losses step down, resume is exact, 2-process gloo data parallelism."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from training.config import LossWeights, load_config
from training.data import extend_landmarks
from training.losses import landmark_loss, point_weights, regularization_loss, total_loss, vertex_loss

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def fixed_batch(ict_dir):
    from training.data import RealFaceDataset, make_splits

    try:
        recs = make_splits(seed=0, sources=["300w"])["train"][:8]
    except FileNotFoundError as err:
        pytest.skip(str(err))
    ds = RealFaceDataset(recs, size=64, augment=False)
    return torch.utils.data.default_collate([ds[i] for i in range(len(ds))])


def _loss_terms(model, batch, target_vertices, perceptual):
    from training.losses import photometric_loss, render_prediction

    out = model(batch["image"])
    w = LossWeights()
    pred71 = extend_landmarks(out.landmarks_2d)
    rendered = render_prediction(out, model, 64)
    return {
        "photometric": photometric_loss(rendered.image, batch["image"], rendered.mask),
        "perceptual": perceptual(rendered.image, batch["image"], rendered.mask),
        "landmark": landmark_loss(pred71, batch["landmarks"], batch["weights"], 64,
                                  point_weights(71, w.eye_weight, w.mouth_weight)),
        "reg": regularization_loss(out, w),
        "recon": vertex_loss(out.vertices, target_vertices),
    }


@pytest.fixture(scope="module")
def perceptual_net():
    from training.perceptual import PerceptualLoss

    return PerceptualLoss("timm/resnet18", input_size=64)  # offline in tests: the logged random-weight fallback


def test_perceptual_fallback_is_logged_and_strict_mode_raises(perceptual_net, caplog):
    from training.perceptual import PerceptualLoss

    assert perceptual_net.pretrained is False  # offline here
    with caplog.at_level("WARNING", logger="training.perceptual"):
        PerceptualLoss("timm/resnet18", input_size=64)
    assert "RANDOMLY INITIALISED" in caplog.text and "resnet18" in caplog.text
    with pytest.raises(RuntimeError, match="pretrained weights"):
        PerceptualLoss("timm/resnet18", require_pretrained=True)
    with pytest.raises(ValueError, match="timm/NAME"):
        PerceptualLoss("resnet18")
    x = torch.rand(2, 3, 64, 64)
    assert perceptual_net(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert perceptual_net(x, x.flip(-1)).item() > 0.01
    assert not any(p.requires_grad for p in perceptual_net.parameters())


def test_one_step_lowers_each_loss(fixed_batch, make_config, perceptual_net):
    from facerecon.models.facerecon import FaceRecon

    torch.manual_seed(0)
    base = FaceRecon(make_config()).train()
    with torch.no_grad():  # start away from the priors' optimum (at init the coefficients are already ~0)
        base.identity_head.bias.fill_(0.5)
        base.albedo_head.bias.fill_(0.5)
        base.lighting_head.bias.fill_(0.1)
        target = base(fixed_batch["image"]).vertices + 1.0  # a fixed 3D target, 1 mm off along every axis
    for name in ("landmark", "reg", "recon", "photometric", "perceptual"):
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        before = _loss_terms(model, fixed_batch, target, perceptual_net)[name]
        before.backward()
        opt.step()
        with torch.no_grad():  # train mode both times: BatchNorm uses the same batch statistics
            after = _loss_terms(model, fixed_batch, target, perceptual_net)[name]
        assert after < before, f"{name}: {before.item():.6g} -> {after.item():.6g}"


def test_total_loss_parts(fixed_batch, tiny_model):
    out = tiny_model(fixed_batch["image"])
    total, parts = total_loss(out, fixed_batch, LossWeights(), 64, extend_landmarks)
    assert set(parts) == {"landmark", "reg", "total"}
    assert math.isclose(parts["total"].item(), (parts["landmark"] + parts["reg"]).item(), rel_tol=1e-5)
    # Missing targets (weight 0, NaN coordinates) do not poison the loss.
    batch = dict(fixed_batch)
    batch["landmarks"] = fixed_batch["landmarks"].clone()
    batch["landmarks"][:, :10] = float("nan")
    batch["weights"] = fixed_batch["weights"].clone()
    batch["weights"][:, :10] = 0
    assert torch.isfinite(total_loss(out, batch, LossWeights(), 64, extend_landmarks)[0])


def test_lr_schedule_warmup_cosine_and_cyclic():
    from training.train import lr_lambda

    cfg = load_config(None, ["warmup_steps=10", "max_steps=110"])
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5, rel=1e-6) and f(110) == pytest.approx(0.01)
    cyc = lr_lambda(load_config(None, ["warmup_steps=0", "schedule=cyclic", "cycle_steps=20"]))
    assert cyc(0) == pytest.approx(1.0) and cyc(20) == pytest.approx(1.0) and cyc(10) < 0.6


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(TINY, ["lr=3e-4", "model.input_size=96", "loss.landmark=2"])
    assert cfg.lr == 3e-4 and cfg.model["input_size"] == 96 and cfg.loss.landmark == 2
    with pytest.raises(ValueError, match="unknown training config keys"):
        load_config(TINY, ["bogus=1"])
    with pytest.raises(ValueError, match="input_size"):
        load_config(TINY, ["model.input_size=100"])
    cfg = load_config(TINY, ["augmentation.large_rotation_p=0.2", "augmentation.scale=[0.9, 1.1]"])
    aug = cfg.augment_config()
    assert aug.large_rotation_p == 0.2 and aug.scale == (0.9, 1.1) and aug.rotation_deg == 30.0
    with pytest.raises(ValueError, match="unknown augmentation options"):
        load_config(TINY, ["augmentation.bogus=1"])
    with pytest.raises(ValueError, match="large_rotation_p"):
        load_config(TINY, ["augmentation.large_rotation_p=2"])


def test_config_base_chain_merges_sections_and_rejects_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "lr: 0.001\nmax_steps: 7\nmodel: {input_size: 96}\nloss: {landmark: 2.0, yaw: 0.2}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nlr: 0.0003\nloss: {yaw: 0.5}\n")
    cfg = load_config(tmp_path / "sub" / "b.yaml", ["loss.pose=0.1"])
    assert cfg.lr == 3e-4 and cfg.max_steps == 7 and cfg.model == {"input_size": 96}
    assert (cfg.loss.landmark, cfg.loss.yaw, cfg.loss.pose) == (2.0, 0.5, 0.1)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ValueError, match="config base cycle"):
        load_config(tmp_path / "c.yaml")


def test_every_shipped_config_loads():
    configs = sorted((ROOT / "training" / "configs").glob("*.yaml"))
    assert len(configs) > 10
    for path in configs:
        cfg = load_config(path)
        assert cfg.max_steps > 0, path


def _tiny_cfg(out: Path, *extra: str):
    return load_config(TINY, [f"output_dir={out}", *extra])


@pytest.mark.timeout(300)
def test_train_resume_reproduces_next_step(ict_dir, tmp_path):
    from training.train import train

    full = train(_tiny_cfg(tmp_path / "a", "max_steps=4", "save_every=2", "val_every=4"))
    assert full["steps"] == 4 and (tmp_path / "a" / "best" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "a" / "final" / "training.json").read_text())["step"] == 4
    assert math.isfinite(full["best_val_nme"])
    ckpt = tmp_path / "a" / "checkpoints" / "step_0000002"
    assert (ckpt / "meta.json").is_file()
    shutil.copytree(ckpt, tmp_path / "b" / "checkpoints" / "step_0000002")
    resumed = train(_tiny_cfg(tmp_path / "b", "max_steps=4", "save_every=2", "val_every=4"), resume="latest")
    assert resumed["steps"] == 4
    for step in (3, 4):
        assert resumed["train_losses"][step] == pytest.approx(full["train_losses"][step], rel=1e-5, abs=1e-7)


@pytest.mark.timeout(600)
def test_two_process_gloo_training(ict_dir, tmp_path):
    """The unchanged script path under ``accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(ROOT / "tests" / "ddp_check.py"), str(tmp_path), str(TINY)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shards = [set(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert len(shards[0] | shards[1]) == 16


def test_landmark_loss_face_norm_is_the_mean_per_face_nme():
    # Face 0: box 20 x 5 (sqrt(w h) = 10), every point 1 px off -> 0.1. Face 1: box 10 x 10, points 2 px off -> 0.2,
    # but only two points weigh (the third's weight is 0). Face 2: no targets, left out of the mean.
    target = torch.tensor([[[0.0, 0.0], [20.0, 5.0], [10.0, 0.0]],
                           [[0.0, 0.0], [10.0, 10.0], [3.0, 3.0]],
                           [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])
    shift = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])[:, None, :]
    pred = (target + shift).requires_grad_()
    weights = torch.tensor([[1.0, 1.0, 0.5], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    face = landmark_loss(pred, target, weights, crop_size=64, norm="face")
    assert face.item() == pytest.approx((0.1 + 0.2) / 2, rel=1e-4)
    crop = landmark_loss(pred, target, weights, crop_size=64)  # pooled over points, / crop side
    assert crop.item() == pytest.approx((1.0 * 2.5 + 2.0 * 2) / 4.5 / 64, rel=1e-4)
    face.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[2] == 0).all()
    assert landmark_loss(pred, target, torch.zeros(3, 3), crop_size=64, norm="face").item() == 0.0
    with pytest.raises(ValueError, match="norm must be one of"):
        landmark_loss(pred, target, weights, crop_size=64, norm="box")
    with pytest.raises(ValueError, match="landmark_norm"):
        LossWeights(landmark_norm="box")


def test_pose_loss_analytic_and_masked():
    import math

    from facerecon.geometry import euler_to_matrix
    from training.losses import pose_loss

    theta = 0.3
    r = euler_to_matrix(torch.tensor([[0.0, 0.0, theta], [0.0, 0.0, 0.0]]))
    eye = torch.eye(3).expand(2, 3, 3)
    assert pose_loss(r, eye, torch.tensor([True, False])).item() == pytest.approx(
        2 * math.sqrt(2) * math.sin(theta / 2), rel=1e-5)
    assert pose_loss(r, eye, torch.tensor([False, False])).item() == 0.0


def test_mix_batches_carries_rotations(tiny_model):
    from training.synthetic import SyntheticFaces, mix_batches

    synth = SyntheticFaces(tiny_model, seed=0, pitch_std=20.0).batch(2, index=0)
    real = {"image": torch.zeros(3, 3, 64, 64), "landmarks": torch.zeros(3, 71, 2), "weights": torch.zeros(3, 71)}
    mixed = mix_batches(real, synth)
    assert mixed["rotation"].shape == (5, 3, 3) and torch.equal(mixed["rotation"][:3], torch.eye(3).expand(3, 3, 3))
    assert torch.equal(mixed["rotation"][3:], synth["rotation"]) and mixed["has_vertices"].tolist() == [0, 0, 0, 1, 1]


def test_synthetic_min_yaw_renders_turned_faces_only(tiny_model):
    from training.config import TrainConfig
    from training.synthetic import SyntheticFaces

    yaw = SyntheticFaces(tiny_model, seed=0, yaw_min=45.0).batch(16, index=0)["yaw"]
    assert yaw.abs().min().item() >= 45.0 - 1e-3 and yaw.abs().max().item() <= 90.0 + 1e-3
    assert (yaw > 0).any() and (yaw < 0).any()
    mixed = SyntheticFaces(tiny_model, seed=0).batch(16, index=0)["yaw"]
    assert (mixed.abs() < 30.0 + 1e-3).sum().item() >= 4  # default: about half near-frontal
    with pytest.raises(ValueError, match="yaw_min"):
        SyntheticFaces(tiny_model, yaw_min=60.0, yaw_max=50.0)
    with pytest.raises(ValueError, match="synthetic_min_yaw"):
        TrainConfig(synthetic_min_yaw=95.0)


def test_yaw_loss_analytic_clamped_masked_and_only_moves_yaw():
    from facerecon.geometry import euler_to_matrix
    from training.losses import yaw_loss

    angles = torch.tensor([[0.5, 0.2, -0.1], [0.0, 0.0, 0.0], [1.2, -0.3, 0.4]], requires_grad=True)
    target = torch.tensor([math.degrees(0.5) + 10.0, float("nan"), 100.0])  # 100 deg is clamped to 89 deg
    loss = yaw_loss(euler_to_matrix(angles), target, beta=0.05)
    expected = ((math.radians(10.0) - 0.025) + (math.radians(89.0) - 1.2 - 0.025)) / 2  # linear part of smooth L1
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # d/dyaw of the mean of two linear terms: -1/2 each; the unlabelled sample and pitch / roll get no gradient.
    assert torch.allclose(angles.grad, torch.tensor([[-0.5, 0, 0], [0, 0, 0], [-0.5, 0, 0]]), atol=1e-5)
    # Quadratic below beta, finite gradient at zero rotation, 0 (with a graph) when nothing is labelled.
    small = torch.zeros(1, 3, requires_grad=True)
    q = yaw_loss(euler_to_matrix(small), torch.tensor([math.degrees(0.01)]), beta=0.05)
    assert q.item() == pytest.approx(0.5 * 0.01**2 / 0.05, rel=1e-4)
    q.backward()
    assert torch.isfinite(small.grad).all() and small.grad[0, 0].item() == pytest.approx(-0.01 / 0.05, rel=1e-4)
    none = yaw_loss(euler_to_matrix(small), torch.tensor([float("nan")]))
    assert none.item() == 0.0 and none.requires_grad


def test_total_loss_adds_weighted_yaw_and_mix_batches_pads_it(fixed_batch, tiny_model):
    from training.losses import yaw_loss
    from training.synthetic import SyntheticFaces, mix_batches

    out = tiny_model(fixed_batch["image"])
    batch = dict(fixed_batch, yaw=torch.linspace(-80.0, 80.0, fixed_batch["image"].shape[0], dtype=torch.float64))
    base, parts0 = total_loss(out, batch, LossWeights(), 64, extend_landmarks)
    assert "yaw" not in parts0  # weight 0: not computed
    total, parts = total_loss(out, batch, LossWeights(yaw=0.5), 64, extend_landmarks)
    assert parts["yaw"].item() == pytest.approx(yaw_loss(out.params.rotation, batch["yaw"]).item(), rel=1e-6)
    assert total.item() == pytest.approx(base.item() + 0.5 * parts["yaw"].item(), rel=1e-5)
    synth = SyntheticFaces(tiny_model, seed=0).batch(2, index=0)
    real = {"image": torch.zeros(3, 3, 64, 64), "landmarks": torch.zeros(3, 71, 2), "weights": torch.zeros(3, 71),
            "yaw": torch.tensor([10.0, float("nan"), -40.0], dtype=torch.float64)}
    mixed = mix_batches(real, synth)
    assert mixed["yaw"].dtype == torch.float32 and mixed["yaw"][[0, 2]].tolist() == [10.0, -40.0]
    assert torch.isnan(mixed["yaw"][[1, 3, 4]]).all()


def _pseudo_targets(reference: torch.Tensor, rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop-pixel 2D points and depth (B, 71) of the mean face seen with ``rotation`` (the camera of the model)."""
    from facerecon.geometry import model_to_camera

    cam = model_to_camera(reference.expand(rotation.shape[0], -1, -1), rotation, torch.tensor([[3.0, -2.0, 500.0]]))
    pix = 0.4 * cam + torch.tensor([32.0, 32.0, 0.0])  # scale 0.4 px / mm, principal point at the crop centre
    return extend_landmarks(pix[..., :2]), torch.cat([pix[..., 2], torch.zeros(rotation.shape[0], 3)], dim=1)


def test_pseudo_rotation_recovers_the_pose_of_3d_points_and_the_loss_masks_sparse_faces(tiny_model):
    from facerecon.geometry import euler_to_matrix
    from training.losses import pose_loss, pseudo_pose_loss, pseudo_rotation

    ref = tiny_model.morphable.landmark_mean
    truth = euler_to_matrix(torch.tensor([[0.4, -0.3, 0.2], [-1.0, 0.5, -0.1], [0.0, 0.0, 0.0]]))
    lmk, depth = _pseudo_targets(ref, truth)
    w = torch.ones(3, 71)
    w[:, :17] = 0.0  # the jaw is never used
    lmk[:, :17] += 40.0
    assert torch.allclose(pseudo_rotation(lmk, depth, w, ref), truth, atol=1e-4)
    pred = euler_to_matrix(torch.tensor([[0.4, -0.1, 0.2], [-1.0, 0.5, -0.1], [0.1, 0.0, 0.0]]).requires_grad_())
    w[2, 17:50] = 0.0  # 18 inner points left: below min_points, no target for the third face
    loss = pseudo_pose_loss(pred, lmk, depth, w, ref)
    assert loss.item() == pytest.approx(pose_loss(pred[:2], truth[:2]).item(), rel=1e-4)  # mean over 2 faces
    assert loss.item() == pytest.approx(2 * math.sqrt(2) * math.sin(0.1) / 2, rel=1e-3)  # 0.2 rad on one of two
    none = pseudo_pose_loss(pred, lmk, depth, torch.zeros(3, 71), ref)
    assert none.item() == 0.0 and none.requires_grad


def test_total_loss_adds_weighted_pseudo_pose_only_with_depth_and_the_model(fixed_batch, tiny_model):
    from facerecon.geometry import euler_to_matrix
    from training.losses import pseudo_pose_loss

    n = fixed_batch["image"].shape[0]
    out = tiny_model(fixed_batch["image"])
    lmk, depth = _pseudo_targets(tiny_model.morphable.landmark_mean, euler_to_matrix(torch.full((n, 3), 0.2)))
    batch = dict(fixed_batch, landmarks=lmk, weights=torch.ones(n, 71), depth=depth, depth_weights=torch.ones(n, 71))
    base, parts0 = total_loss(out, batch, LossWeights(), 64, extend_landmarks, model=tiny_model)
    assert "pseudo_pose" not in parts0  # weight 0: not computed
    total, parts = total_loss(out, batch, LossWeights(pseudo_pose=0.5), 64, extend_landmarks, model=tiny_model)
    expected = pseudo_pose_loss(out.params.rotation, lmk, depth, torch.ones(n, 71), tiny_model.morphable.landmark_mean)
    assert parts["pseudo_pose"].item() == pytest.approx(expected.item(), rel=1e-6) and expected.item() > 0.1
    assert total.item() == pytest.approx(base.item() + 0.5 * expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="pseudo-pose term needs the model"):
        total_loss(out, batch, LossWeights(pseudo_pose=0.5), 64, extend_landmarks)


def test_shape_at_matches_the_dense_shape(tiny_model):
    m = tiny_model.morphable
    torch.manual_seed(1)
    ident, expr = torch.randn(2, m.n_identity), torch.rand(2, m.n_expression)
    index = torch.tensor([5, 0, 123, 5])
    assert torch.allclose(m.shape_at(ident, expr, index), m.shape(ident, expr)[:, index], atol=1e-4)


def test_source_landmarks_2d_uses_each_sources_vertices_with_gradients(tiny_model):
    from training.losses import source_landmarks_2d

    m = tiny_model.morphable
    alt = m.landmark_index.roll(1)  # another definition (any 68 vertices)
    x = torch.rand(3, 3, 64, 64)
    out = tiny_model(x)
    source = torch.tensor([0, 1, -1])
    pred = source_landmarks_2d(tiny_model, out, source, {1: alt})
    expected = tiny_model.project(out.vertices[:, alt], out.params.scale)
    assert torch.allclose(pred[1], expected[1], atol=1e-3)
    assert torch.equal(pred[[0, 2]], out.landmarks_2d[[0, 2]])  # 300-W and synthetic faces keep the model's points
    own = source_landmarks_2d(tiny_model, out, source, {0: m.landmark_index, 1: m.landmark_index})
    assert torch.allclose(own, out.landmarks_2d, atol=1e-3)
    pred[1].sum().backward()
    assert tiny_model.identity_head.weight.grad.abs().sum() > 0


def test_source_landmarks_config_checks_and_mix_batches_marks_synthetic(tiny_model):
    from training.config import TrainConfig
    from training.synthetic import SyntheticFaces, mix_batches

    with pytest.raises(ValueError, match="source_landmarks"):
        TrainConfig(sources=["300w"], source_landmarks={"aflw": "refined-v5"})
    with pytest.raises(ValueError, match="source_landmarks"):
        TrainConfig(sources=["300w", "utkface"], source_landmarks={"utkface": "refined-v5"})
    synth = SyntheticFaces(tiny_model, seed=0).batch(2, index=0)
    real = {"image": torch.zeros(3, 3, 64, 64), "landmarks": torch.zeros(3, 71, 2), "weights": torch.zeros(3, 71),
            "source": torch.tensor([0, 1, 0])}
    assert mix_batches(real, synth)["source"].tolist() == [0, 1, 0, -1, -1]


@pytest.mark.timeout(300)
def test_train_with_source_landmarks(ict_dir, tmp_path):
    """The model's own definition given per source changes nothing; another one changes the validation NME."""
    import dataclasses

    from facerecon.models.facerecon import FaceRecon
    from facerecon.morphable.landmarks import save_landmark_index
    from training.train import source_definitions, train

    base = _tiny_cfg(tmp_path / "a", "max_steps=2", "val_every=2", "save_every=2")
    m = FaceRecon(base.model_config()).morphable
    own = save_landmark_index(tmp_path / "own.json", m.landmark_index, m.surface, m.faces, m.n_vertices)
    other = save_landmark_index(tmp_path / "other.json", m.landmark_index.roll(1), m.surface, m.faces, m.n_vertices)
    plain = train(base)
    same = train(dataclasses.replace(base, output_dir=str(tmp_path / "b"), source_landmarks={"300w": str(own)}))
    moved = train(dataclasses.replace(base, output_dir=str(tmp_path / "c"), source_landmarks={"300w": str(other)}))
    for step in (1, 2):
        assert same["train_losses"][step] == pytest.approx(plain["train_losses"][step], rel=1e-4)
    assert same["best_val_nme"] == pytest.approx(plain["best_val_nme"], rel=1e-4)
    assert moved["best_val_nme"] > 1.2 * plain["best_val_nme"]
    bad = dataclasses.replace(base, source_landmarks={"300w": "ict"})
    with pytest.raises(ValueError, match="fitted"):
        source_definitions(bad, FaceRecon(bad.model_config()))


def test_validation_records_match_build_datasets_without_the_training_set(ict_dir, tmp_path):
    """train.validation_records gives build_datasets' validation records and never reads training-only labels."""
    import dataclasses

    from training.train import build_datasets, validation_records

    cfg = _tiny_cfg(tmp_path / "a")
    _, val = build_datasets(cfg, 64)
    keys = [r.key for r in validation_records(cfg)]
    assert keys == [r.key for r in val.records] and len(keys) == cfg.val_limit
    missing = dataclasses.replace(cfg, pseudo_sources=["300w"], pseudo_dir=str(tmp_path / "no-pseudo"))
    with pytest.raises(FileNotFoundError, match="pseudo-label file"):
        build_datasets(missing, 64)
    assert [r.key for r in validation_records(missing)] == keys


def test_own_validation_benchmark_matches_definitions(ict_dir, tmp_path):
    """benchmarks/own_val.py: the model's own definition per source changes nothing, a shifted one does."""
    import dataclasses
    import importlib.util

    from facerecon.models.facerecon import FaceRecon
    from facerecon.morphable.landmarks import save_landmark_index

    spec = importlib.util.spec_from_file_location("own_val", ROOT / "benchmarks" / "own_val.py")
    own_val = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(own_val)
    cfg = _tiny_cfg(tmp_path / "a")
    torch.manual_seed(0)
    model = FaceRecon(cfg.model_config()).eval()
    m = model.morphable
    own = save_landmark_index(tmp_path / "own.json", m.landmark_index, m.surface, m.faces, m.n_vertices)
    other = save_landmark_index(tmp_path / "other.json", m.landmark_index.roll(1), m.surface, m.faces, m.n_vertices)
    plain = own_val.own_validation(model, cfg)
    assert set(plain) == {"model_definition"}
    res = plain["model_definition"]
    assert res["n"] == cfg.val_limit and res["nme/300w"] == pytest.approx(res["nme"]) and 0 < res["nme"] < 1
    same = own_val.own_validation(model, dataclasses.replace(cfg, source_landmarks={"300w": str(own)}))
    assert same["model_definition"]["nme"] == pytest.approx(res["nme"], rel=1e-6)
    assert same["source_definitions"]["nme"] == pytest.approx(res["nme"], rel=1e-6)
    moved = own_val.own_validation(model, dataclasses.replace(cfg, source_landmarks={"300w": str(other)}))
    assert moved["source_definitions"]["nme"] > 1.2 * res["nme"]
    flipped = own_val.own_validation(model, cfg, flip_test=True)["model_definition"]
    assert flipped["nme"] != pytest.approx(res["nme"], rel=1e-6)
    shifted = own_val.own_validation(model, cfg, flip_test=True, shift_test=True)["model_definition"]
    assert shifted["n"] == res["n"] and shifted["nme"] != pytest.approx(flipped["nme"], rel=1e-6)
    unit = own_val.own_validation(model, cfg, crop_multiplier=1.0)["model_definition"]
    assert unit["nme"] == pytest.approx(res["nme"], rel=1e-6)
    reused = own_val.own_validation(model, cfg, records=own_val.validation_records(cfg))["model_definition"]
    assert reused["n"] == res["n"] and reused["nme"] == pytest.approx(res["nme"], rel=1e-6)
    tighter = own_val.own_validation(model, cfg, crop_multiplier=0.8)["model_definition"]
    assert tighter["n"] == res["n"] and tighter["nme"] != pytest.approx(res["nme"], rel=1e-3)
    with pytest.raises(ValueError, match="crop_multiplier"):
        own_val.own_validation(model, cfg, crop_multiplier=0.0)
    with pytest.raises(ValueError, match="crop_scale"):  # 0.5 x 1.6 is outside the accepted crop scales
        own_val.own_validation(model, cfg, crop_multiplier=0.5)


def test_validation_yaw_mae_against_clamped_labels(fixed_batch, tiny_model):
    """train.evaluate: yaw MAE over the labelled faces only, labels clamped to +-89 deg, NME unchanged by it."""
    from accelerate import Accelerator

    from facerecon.geometry import matrix_to_euler
    from training.data import extend_landmarks
    from training.train import evaluate

    batch = dict(fixed_batch)
    size = tiny_model.config.input_size
    batch["image"] = torch.nn.functional.interpolate(batch["image"], size=(size, size), mode="bilinear")
    batch["landmarks"] = batch["landmarks"] * (size / fixed_batch["image"].shape[-1])
    labels = torch.tensor([10.0, float("nan"), -120.0, 45.0, float("nan"), 0.0, 95.0, -30.0], dtype=torch.float64)
    batch["yaw"] = labels
    with torch.no_grad():
        yaw = torch.rad2deg(matrix_to_euler(tiny_model(batch["image"], landmarks_only=True).params.rotation)[:, 0])
    accelerator = Accelerator(cpu=True)
    res = evaluate(tiny_model, [batch], accelerator, extend_landmarks)
    tiny_model.eval()  # evaluate() hands the model back in training mode
    known = torch.isfinite(labels)
    expected = (yaw[known].double() - labels[known].clamp(-89, 89)).abs().mean()
    assert res["n_yaw"] == 6 and res["yaw_mae"] == pytest.approx(float(expected), rel=1e-5)
    without = evaluate(tiny_model, [{k: v for k, v in batch.items() if k != "yaw"}], accelerator, extend_landmarks)
    unlabelled = evaluate(tiny_model, [dict(batch, yaw=torch.full((8,), float("nan")))], accelerator, extend_landmarks)
    tiny_model.eval()
    assert "yaw_mae" not in without and without["nme"] == pytest.approx(res["nme"], rel=1e-6)
    assert "yaw_mae" not in unlabelled


def test_format_validation_line():
    from training.train import format_validation

    m = {"nme": 0.05986, "n": 1732, "nme/300w": 0.03897, "nme/aflw": 0.06306}
    assert format_validation(m) == "val NME 0.0599 on 1732 faces (300w 0.0390, aflw 0.0631)"
    m.update(yaw_mae=7.974, n_yaw=1502)
    assert format_validation(m, digits=5) == ("val NME 0.05986 on 1732 faces (300w 0.03897, aflw 0.06306), "
                                              "yaw MAE 7.97 deg on 1502 labelled faces")


def test_tracker_metrics_keep_errors_drop_counts():
    from training.train import tracker_metrics

    m = {"nme": 0.06, "n": 1732, "nme/300w": 0.039, "yaw_mae": 7.97, "n_yaw": 1502}
    assert tracker_metrics(m) == {"val/nme": 0.06, "val/nme/300w": 0.039, "val/yaw_mae": 7.97}
