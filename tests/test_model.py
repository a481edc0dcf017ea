from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from facerecon.config import FaceReconConfig
from facerecon.errors import ConfigError, ModelDownloadError
from facerecon.models.facerecon import FaceRecon, FaceReconOutput


def test_config_validation(make_config):
    with pytest.raises(ConfigError, match="input_size"):
        FaceReconConfig(input_size=100)
    with pytest.raises(ConfigError, match="head_dim"):
        FaceReconConfig(head_dim=30, head_heads=4)
    with pytest.raises(ConfigError, match="n_identity"):
        FaceReconConfig(n_identity=101)
    with pytest.raises(ConfigError, match="surface"):
        FaceReconConfig(surface="body")
    with pytest.raises(ConfigError, match="unknown FaceReconConfig keys"):
        FaceReconConfig.from_dict({"input_size": 64, "bogus": 1})
    cfg = make_config()
    assert FaceReconConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unknown_backbone_is_a_clear_error(ict_dir, make_config):
    with pytest.raises(ValueError, match="no_such_net"):
        FaceRecon(make_config(backbone="no_such_net"))


def test_output_fields_and_shapes(tiny_model):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = tiny_model(x)
    assert isinstance(out, FaceReconOutput)
    n = tiny_model.morphable.n_vertices
    assert out.params.identity.shape == (2, 10)
    assert out.params.expression.shape == (2, 53)
    assert out.params.albedo.shape == (2, 60)  # the bundled learned albedo model
    assert out.params.lighting.shape == (2, 9, 3)
    assert out.params.rotation.shape == (2, 3, 3)
    assert out.params.translation.shape == (2, 3) and out.params.scale.shape == (2,)
    assert out.vertices.shape == out.shape.shape == out.normals.shape == (2, n, 3)
    assert out.landmarks_3d.shape == (2, 68, 3) and out.landmarks_2d.shape == (2, 68, 2)
    assert out.albedo.shape == out.colors.shape == (2, n, 3)
    assert out.attention.shape == (2, len(tiny_model.token_names), 4, 4)  # stride 16 at 64 px
    assert torch.allclose(out.attention.sum((-1, -2)), torch.ones(2, 9), atol=1e-5)
    assert torch.allclose(torch.linalg.det(out.params.rotation), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        tiny_model(torch.rand(1, 3, 32, 32))


def test_step_zero_is_the_mean_face_frontal_centred():
    """The untrained default model predicts the mean face, frontal, centred, filling 1/1.6 of the crop."""
    torch.manual_seed(0)
    model = FaceRecon(FaceReconConfig()).eval()
    size = model.config.input_size
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.euler.abs().max().item() < math.radians(2.0)
    assert out.params.expression.max().item() < 0.01
    assert out.params.identity.abs().max().item() < 0.2  # in units of sigma
    dev = (out.shape - model.morphable.mean).norm(dim=-1).max().item()
    assert dev < 1.0  # mm
    lmk = out.landmarks_2d
    lo, hi = lmk.amin(1), lmk.amax(1)
    centre = 0.5 * (lo + hi)
    assert torch.allclose(centre, torch.full_like(centre, (size - 1) / 2), atol=1.5)
    side = (hi - lo).amax(-1)
    assert torch.allclose(side, torch.full_like(side, size / 1.6), rtol=0.03)
    # Frontal: the image-left eye is left of the image-right eye, the chin below the nose.
    assert torch.all(lmk[:, 36, 0] < lmk[:, 45, 0]) and torch.all(lmk[:, 8, 1] > lmk[:, 30, 1])
    # Ambient lighting: shaded colour equals albedo within 3%.
    assert torch.allclose(out.colors, out.albedo, atol=0.03)


def test_every_parameter_gets_a_gradient(ict_dir, make_config):
    torch.manual_seed(0)
    model = FaceRecon(make_config()).train()
    x = torch.rand(4, 3, 64, 64)
    target = torch.rand(4, 68, 2) * 64
    out = model(x)
    landmark_loss = (out.landmarks_2d - target).abs().mean()
    landmark_loss.backward(retain_graph=True)
    colour_only = {"albedo_head.weight", "albedo_head.bias", "lighting_head.weight", "lighting_head.bias"}
    for name, p in model.named_parameters():
        if name in colour_only:
            assert p.grad is None or p.grad.abs().sum() == 0, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"{name} gets no gradient from the landmark loss"
    # The albedo and lighting heads are reached by a loss on the shaded colours.
    model.zero_grad()
    (landmark_loss + (out.colors - 0.5).square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_load_round_trip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if k.startswith(("morphable.", "albedo_model."))]
    assert "backbone.pixel_mean" not in keys and "scale_prior" not in keys
    assert json.loads((tmp_path / "config.json").read_text())["backbone"] == "test_efficientnet"
    loaded = FaceRecon.from_pretrained(tmp_path, strict=True).eval()
    assert loaded.config == tiny_model.config
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = tiny_model(x), loaded(x)
    for field in ("vertices", "landmarks_2d", "colors", "attention"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    card = (tmp_path / "README.md").read_text()
    assert "pipeline_tag: image-to-3d" in card and "ICT-FaceKit" in card and "MIT" in card


def test_config_json_round_trips_after_from_pretrained(tiny_model, tmp_path, ict_dir):
    """A model loaded with from_pretrained (e.g. to fine-tune) saves a config.json that loads again."""
    tiny_model.save_pretrained(tmp_path / "a")
    loaded = FaceRecon.from_pretrained(tmp_path / "a", strict=True, ict_path=str(ict_dir))
    loaded.save_pretrained(tmp_path / "b")
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved == tiny_model.config.to_dict()
    assert FaceRecon.from_pretrained(tmp_path / "b", strict=True).config == tiny_model.config


def test_load_never_downloads_backbone_weights(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["pretrained_backbone"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = FaceRecon.from_pretrained(tmp_path, strict=True)
    assert loaded.config.pretrained_backbone is False


def test_from_pretrained_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (tmp_path / "config.json").write_text("{}")
        FaceRecon.from_pretrained(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelDownloadError, match="Hugging Face Hub.*local folder"):
        FaceRecon.from_pretrained("facerecon-org/facerecon-does-not-exist", cache_dir=tmp_path / "hub")


def test_push_to_hub_through_the_mixin(tiny_model, tmp_path, monkeypatch):
    """push_to_hub uploads config.json, model.safetensors and the card; the upload is mocked (no network)."""
    import huggingface_hub.hub_mixin as hub_mixin

    uploaded: dict[str, object] = {}

    class FakeApi:
        def __init__(self, *args, **kwargs):
            pass

        def create_repo(self, repo_id, **kwargs):
            from huggingface_hub import RepoUrl

            uploaded["repo_id"] = repo_id
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            folder = Path(folder_path)
            uploaded["files"] = sorted(p.name for p in folder.iterdir())
            uploaded["config"] = json.loads((folder / "config.json").read_text())
            with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
                uploaded["n_tensors"] = len(list(f.keys()))
            return "https://huggingface.co/commit/0"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    tiny_model.push_to_hub("org/facerecon-test")
    assert uploaded["repo_id"] == "org/facerecon-test"
    assert uploaded["files"] == ["README.md", "config.json", "model.safetensors"]
    assert uploaded["config"]["input_size"] == 64
    assert uploaded["n_tensors"] == len(tiny_model.state_dict())


def test_landmarks_only_decode_matches_full(tiny_model):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        full = tiny_model(x)
        fast = tiny_model(x, landmarks_only=True)
    assert fast.vertices is None and fast.colors is None
    assert torch.allclose(fast.landmarks_2d, full.landmarks_2d, atol=1e-4)
    assert torch.allclose(fast.landmarks_3d, full.landmarks_3d, atol=1e-4)


def test_deepcopy_and_pickle_after_use(tiny_model, astronaut):
    """Run-time caches (sparse normals incidence, pipelines with locks) never block copying the model."""
    import copy
    import pickle

    with torch.no_grad():
        ref = tiny_model(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    tiny_model.reconstruct(astronaut, box=[170.0, 30.0, 300.0, 180.0])
    for clone in (copy.deepcopy(tiny_model), pickle.loads(pickle.dumps(tiny_model))):
        with torch.no_grad():
            out = clone(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        assert torch.equal(out.normals, ref.normals) and torch.equal(out.vertices, ref.vertices)


def test_training_after_inference_mode_use(tiny_model):
    """Caches first built under torch.inference_mode (normals incidence, mirror maps) still serve backward."""
    import copy

    model = copy.deepcopy(tiny_model)  # copies drop the run-time caches
    assert "_incidence" not in model.morphable.__dict__
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model.eval()(x, flip_test=True)
    assert model.morphable.__dict__["_incidence"] and model.morphable.__dict__["_identity_mirror"]
    model.train()
    out = model(x)  # the normals use the incidence cache
    mirrored = model(x, flip_test=True).params.identity  # through the identity mirror map cache
    (out.normals.sum() + out.landmarks_2d.sum() + mirrored.sum()).backward()
    for head in (model.pose_head, model.identity_head):
        assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()


def test_batchnorm_folding_matches_and_tracks_weight_updates(tiny_model, astronaut):
    from facerecon.inference.pipeline import Reconstructor
    from facerecon.models.fuse import fold_batchnorm

    fused, n = fold_batchnorm(tiny_model.backbone)
    assert n > 0 and not any(type(m) is torch.nn.BatchNorm2d for m in fused.modules())
    assert any(type(m) is torch.nn.BatchNorm2d for m in tiny_model.backbone.modules())  # the original is untouched
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(fused(x), tiny_model.backbone(x), atol=1e-5)
    box = [170.0, 30.0, 300.0, 180.0]
    ref = Reconstructor(tiny_model, fuse=False)(astronaut, box=box)[0]
    rec = Reconstructor(tiny_model)
    got = rec(astronaut, box=box)[0]
    assert np.abs(ref.vertices - got.vertices).max() < 1e-3 and np.abs(ref.landmarks - got.landmarks).max() < 1e-3
    first = rec._fused[2]
    rec(astronaut, box=box)
    assert rec._fused[2] is first  # reused while the weights are unchanged
    saved = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    try:
        with torch.no_grad():
            tiny_model.backbone.fuse[0].weight.mul_(1.5)  # an in-place update, as an optimiser step does
        changed = rec(astronaut, box=box)[0]
        expected = Reconstructor(tiny_model, fuse=False)(astronaut, box=box)[0]
        assert rec._fused[2] is not first and np.abs(changed.vertices - expected.vertices).max() < 1e-3
    finally:
        tiny_model.load_state_dict(saved)


def test_mirror_parameters_decode_to_the_mirror_image(tiny_model):
    from facerecon.morphable.ict import MIRROR_68

    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    mm = tiny_model.morphable
    # The landmark vertices are mirror-consistent, so decoded landmarks mirror exactly (up to the identity fit).
    assert torch.equal(mm.vertex_mirror[mm.landmark_index], mm.landmark_index[list(MIRROR_68)])
    with torch.no_grad():
        out = tiny_model(x)
        mirrored = tiny_model.decode(tiny_model.mirror_parameters(out.params))
    s = tiny_model.config.input_size
    expected = out.landmarks_2d[:, list(MIRROR_68)] * torch.tensor([-1.0, 1.0]) + torch.tensor([s - 1.0, 0.0])
    assert torch.allclose(mirrored.landmarks_2d, expected, atol=2e-3)  # pixels
    flip = torch.tensor([-1.0, 1.0, 1.0])
    err = (mirrored.vertices - out.vertices[:, mm.vertex_mirror] * flip).norm(dim=-1)
    assert err.mean() < 0.05 and err.max() < 2.0  # mm: ICT-FaceKit's identity modes are mirror-closed to ~1 %
    assert torch.allclose(mirrored.euler, out.euler * torch.tensor([-1.0, 1.0, -1.0]), atol=1e-5)
    assert (mirrored.colors - out.colors[:, mm.vertex_mirror]).abs().mean() < 5e-3
    twice = tiny_model.mirror_parameters(tiny_model.mirror_parameters(out.params))
    assert torch.allclose(twice.identity, out.params.identity, atol=0.05)
    assert torch.equal(twice.expression, out.params.expression) and torch.equal(twice.rotation, out.params.rotation)


def test_flip_test_averages_a_crop_with_its_mirror(tiny_model):
    from facerecon.models.facerecon import average_parameters
    from facerecon.morphable.ict import MIRROR_68

    torch.manual_seed(2)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        got = tiny_model(x, flip_test=True)
        plain, flipped = tiny_model(x), tiny_model(x.flip(-1))
        want = average_parameters(plain.params, tiny_model.mirror_parameters(flipped.params))
        assert torch.allclose(got.params.rotation, want.rotation, atol=1e-5)
        assert torch.allclose(got.params.identity, want.identity, atol=1e-5)
        assert torch.allclose(got.attention, plain.attention, atol=1e-6)
        # Flip-tested predictions of an image and of its mirror are mirror images of each other.
        other = tiny_model(x.flip(-1), flip_test=True)
    s = tiny_model.config.input_size
    mirrored = other.landmarks_2d[:, list(MIRROR_68)] * torch.tensor([-1.0, 1.0]) + torch.tensor([s - 1.0, 0.0])
    assert torch.allclose(got.landmarks_2d, mirrored, atol=0.02)
    # Not the same as the plain forward, and the average of one prediction is itself.
    assert not torch.allclose(got.landmarks_2d, plain.landmarks_2d, atol=1e-3)
    one = average_parameters(plain.params)
    assert torch.allclose(one.rotation, plain.params.rotation, atol=1e-6) and torch.equal(one.scale, plain.params.scale)
    with pytest.raises(ValueError, match="even batch"):
        tiny_model.merge_flipped(plain.params)
    with pytest.raises(ValueError, match="same batch size"):
        average_parameters(plain.params, plain.params[:2])


def test_mirror_expression_index_swaps_sides():
    from facerecon.morphable.model import mirror_expression_index

    names = ("browDown_L", "browDown_R", "jawLeft", "jawOpen", "jawRight")
    assert mirror_expression_index(names) == [1, 0, 4, 3, 2]
    with pytest.raises(ValueError, match="eyeBlink_L"):
        mirror_expression_index(("eyeBlink_L", "jawOpen"))


def test_merge_views_maps_each_view_into_the_crop_frame(tiny_model):
    """A view's prediction, merged alone, projects where the view's pixels lie in the face's crop and image."""
    from facerecon.geometry import crop_to_image, view_boxes

    torch.manual_seed(3)
    s = tiny_model.config.input_size
    x = torch.rand(2, 3, s, s)
    views = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.07, -0.05], [1.1, -0.07, 0.03]])
    box = torch.tensor([[10.0, 20.0, 110.0, 120.0], [0.0, 0.0, 64.0, 64.0]])
    with torch.no_grad():
        out = tiny_model(x, landmarks_only=True)
        c = (s - 1) / 2.0
        for k in range(len(views)):
            m, dx, dy = views[k].tolist()
            merged = tiny_model.decode(tiny_model.merge_views(out.params, views[k:k + 1]), landmarks_only=True)
            want = c + m * (out.landmarks_2d - c) + torch.tensor([dx, dy]) * s  # view pixels in the crop frame
            assert torch.allclose(merged.landmarks_2d, want, atol=1e-4)
            # The same points in the image: through the view's own box, and through the crop's box after merging.
            vb = view_boxes(box, views[k:k + 1])[:, 0]
            assert torch.allclose(crop_to_image(out.landmarks_2d, vb, s), crop_to_image(merged.landmarks_2d, box, s),
                                  atol=1e-3)
            assert torch.allclose(merged.params.rotation, out.params.rotation, atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        tiny_model.merge_views(out.params, views[:2][None].expand(3, 2, 3).reshape(-1, 3)[:3])
    with pytest.raises(ValueError, match=r"\(V, 3\)"):
        tiny_model.merge_views(out.params, views[:, :2])


def test_forward_with_views_averages_the_mapped_views(tiny_model):
    from facerecon.models.facerecon import SHIFT_TEST_VIEWS, average_parameters

    torch.manual_seed(4)
    s = tiny_model.config.input_size
    views = torch.tensor(SHIFT_TEST_VIEWS)
    x = torch.rand(2, len(views), 3, s, s)
    with torch.no_grad():
        got = tiny_model(x, flip_test=True, views=views)
        per_view = [tiny_model(x[:, k], flip_test=True) for k in range(len(views))]
        mapped = [tiny_model.merge_views(p.params, views[k:k + 1]) for k, p in enumerate(per_view)]
        want = tiny_model.decode(average_parameters(*mapped))
    assert got.landmarks_2d.shape == (2, 68, 2)
    assert torch.allclose(got.landmarks_2d, want.landmarks_2d, atol=1e-4)
    assert torch.allclose(got.params.rotation, want.params.rotation, atol=1e-5)
    assert torch.allclose(got.attention, per_view[0].attention, atol=1e-6)
    assert not torch.allclose(got.landmarks_2d, per_view[0].landmarks_2d, atol=1e-3)
    with pytest.raises(ValueError, match=r"\(B, V, 3"):
        tiny_model(x[:, 0], views=views)
