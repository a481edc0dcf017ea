"""End-to-end inference: reconstruct(), exports, the CLI and bad inputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from PIL import Image

from facerecon.errors import ImageReadError, NoFaceError

N_VERTICES, N_FACES = 9409, 18460


@pytest.fixture(scope="module")
def model(ict_dir, make_config):
    import torch

    from facerecon.models.facerecon import FaceRecon

    torch.manual_seed(0)
    return FaceRecon(make_config()).eval()


def _check_result(face, width, height):
    assert face.vertices.shape == (N_VERTICES, 3) and face.faces.shape == (N_FACES, 3)
    assert face.landmarks.shape == (68, 2) and np.isfinite(face.landmarks).all()
    x0, y0, x1, y1 = face.box
    assert x1 > x0 and y1 > y0
    assert face.landmarks[:, 0].min() >= x0 - 1 and face.landmarks[:, 0].max() <= x1 + 1
    assert set(face.pose) == {"yaw", "pitch", "roll"}
    assert face.image_size == (width, height)


def test_reconstruct_astronaut_and_exports(model, astronaut, tmp_path):
    faces = model.reconstruct(astronaut)
    assert len(faces) >= 1
    face = faces[0]
    _check_result(face, 512, 512)
    # The largest detection is the astronaut's face (around x 175-275, y 60-170).
    cx, cy = face.landmarks.mean(0)
    assert 120 < cx < 280 and 20 < cy < 200
    for fmt in ("glb", "obj", "ply"):
        path = face.export(tmp_path / f"face.{fmt}")
        mesh = trimesh.load(path, force="mesh", process=False)
        assert mesh.vertices.shape == (N_VERTICES, 3) and mesh.faces.shape == (N_FACES, 3), fmt
        assert mesh.visual.kind == "vertex", fmt
        assert np.allclose(mesh.vertices, face.vertices_view, atol=1e-3), fmt
    params = json.loads(face.export(tmp_path / "face.json").read_text())
    assert len(params["landmarks_2d"]) == 68 and "jawOpen" in params["expression"]
    with pytest.raises(ValueError, match="unsupported export format"):
        face.export(tmp_path / "face.stl")


def test_given_box_skips_detection(model, astronaut):
    faces = model.reconstruct(astronaut, box=[150, 60, 250, 170])
    assert len(faces) == 1 and faces[0].detection.tolist() == [150, 60, 250, 170]
    with pytest.raises(ValueError, match="face box"):
        model.reconstruct(astronaut, box=[10, 10, 5, 5])


@pytest.mark.parametrize("placement_views", [False, True])
def test_shift_test_views_only_in_the_final_pass_by_default(model, astronaut, placement_views):
    from facerecon.inference.pipeline import Reconstructor

    rec = Reconstructor(model, refine_steps=2, shift_test=True, placement_views=placement_views)
    seen = []
    forward = rec.forward

    def spy(crops, landmarks_only=False, use_views=True, turns=None):
        seen.append((tuple(crops.shape[:2]) if crops.dim() == 5 else (crops.shape[0],), landmarks_only, use_views))
        return forward(crops, landmarks_only=landmarks_only, use_views=use_views, turns=turns)

    rec.forward = spy
    faces = rec(astronaut, box=[150, 60, 250, 170])
    v = (1, 5)
    assert seen == [(v if placement_views else (1,), True, placement_views)] * 2 + [(v, False, True)]
    assert len(faces) == 1 and np.isfinite(faces[0].landmarks).all()


@pytest.mark.parametrize("crop_scale", [1.6, 1.5])
def test_detection_crop_follows_the_crop_scale(ict_dir, make_config, crop_scale):
    from facerecon.inference.pipeline import Reconstructor
    from facerecon.models.facerecon import FaceRecon

    rec = Reconstructor(FaceRecon(make_config(crop_scale=crop_scale)), detector=lambda img: [])
    assert rec.detection_scale == pytest.approx(1.45 * crop_scale / 1.6)
    box = rec.crop_from_detection([100.0, 100.0, 200.0, 180.0])  # 100 x 80 box, centre (150, 140)
    side = 145.0 * crop_scale / 1.6
    np.testing.assert_allclose(box, [150 - side / 2, 150.4 - side / 2, 150 + side / 2, 150.4 + side / 2])
    assert Reconstructor(FaceRecon(make_config(crop_scale=crop_scale)), detection_scale=2.0).detection_scale == 2.0


def test_neutral_export_differs_only_by_expression(model, astronaut):
    face = model.reconstruct(astronaut, max_faces=1)[0]
    assert face.to_trimesh(neutral=True).vertices.shape == (N_VERTICES, 3)
    assert np.abs(face.vertices_neutral - face.vertices_view).max() < 5.0  # near-neutral untrained expression


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.timeout(120)
def test_bad_inputs_never_crash_or_hang(model, astronaut, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "random.jpg").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    for name in ("random.jpg", "empty.jpg", "one.png", "missing.jpg"):
        with pytest.raises(ImageReadError, match=name.split(".")[0]):
            model.reconstruct(tmp_path / name)
    with pytest.raises(ImageReadError):
        model.reconstruct(b"\x00\x01not an image")
    # Grayscale and RGBA versions of a face photo give results.
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    _check_result(model.reconstruct(gray)[0], 512, 512)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    _check_result(model.reconstruct(rgba)[0], 512, 512)
    # A photo without a face.
    coffee = pytest.importorskip("skimage.data").coffee()
    with pytest.raises(NoFaceError, match="no face"):
        model.reconstruct(coffee)
    # An 8000 x 8000 photo (the astronaut upscaled) is handled at full size.
    big = np.asarray(Image.fromarray(astronaut).resize((8000, 8000), Image.BILINEAR))
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=80)
    del big
    face = model.reconstruct(path)[0]
    _check_result(face, 8000, 8000)
    cx, cy = face.landmarks.mean(0) * 512 / 8000
    assert 120 < cx < 280 and 20 < cy < 200


def test_cli_reconstruct_aflw_image(aflw_dev_image, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "facerecon.cli", "reconstruct", str(aflw_dev_image), "-o", str(out),
                           "--format", "glb,json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    mesh = trimesh.load(out / f"{aflw_dev_image.stem}.glb", force="mesh", process=False)
    assert mesh.vertices.shape == (N_VERTICES, 3) and mesh.faces.shape == (N_FACES, 3)
    assert json.loads((out / f"{aflw_dev_image.stem}.json").read_text())["image_size"] == [450, 450]


def test_cli_lists_failures_with_nonzero_exit(ict_dir, astronaut, tmp_path, model, monkeypatch):
    from facerecon import cli

    good = tmp_path / "astronaut.png"
    good.write_bytes(_png(astronaut))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    code = cli.main(["reconstruct", str(good), str(bad), "-o", str(tmp_path / "o"), "--model", str(model_dir),
                     "--format", "ply"])
    assert code == 1
    assert (tmp_path / "o" / "astronaut.ply").is_file()
    with pytest.raises(SystemExit):
        cli.main(["reconstruct", str(good), "-o", str(tmp_path), "--format", "stl"])


def test_textured_exports(model, astronaut, tmp_path):
    from facerecon.inference.texture import bake_texture, uv_vertex_map

    face = model.reconstruct(astronaut, max_faces=1)[0]
    vmap = uv_vertex_map(face.faces, face.face_uvs, len(face.uvs))
    assert vmap.shape == (len(face.uvs),) and vmap.max() == N_VERTICES - 1
    # A constant colour bakes into a constant texture (every covered and seam-padded texel).
    tex = bake_texture(np.full((N_VERTICES, 3), 0.5, np.float32), face.faces, face.uvs, face.face_uvs, size=128)
    covered = tex.reshape(-1, 3)[tex.reshape(-1, 3).sum(1) > 0]
    assert len(covered) > 0.5 * 128 * 128 and np.abs(covered.astype(int) - 128).max() <= 1
    glb = face.export(tmp_path / "t.glb", texture=True)
    mesh = trimesh.load(glb, force="mesh", process=False)
    assert mesh.visual.kind == "texture" and mesh.faces.shape == (N_FACES, 3)
    assert mesh.vertices.shape == (len(face.uvs), 3)  # split along the UV seams
    assert mesh.visual.material.baseColorTexture.size == (512, 512)
    assert list(mesh.visual.material.baseColorFactor) == [255, 255, 255, 255]  # the texture is not darkened
    obj = face.export(tmp_path / "obj" / "t.obj", texture=True)
    names = sorted(p.name for p in obj.parent.iterdir())
    assert "t.mtl" in names and any(n.endswith(".png") for n in names)
    assert "mtllib t.mtl" in obj.read_text()
    with pytest.raises(ValueError, match="texture needs colours"):
        face.to_trimesh(colors="none", texture=True)


def test_flip_shift_and_orientation_tests_are_on_by_default_in_cli_and_app(monkeypatch):
    import app
    from facerecon import cli

    parser = cli.build_parser()
    assert parser.parse_args(["reconstruct", "a.jpg", "-o", "out"]).flip_test is True
    assert parser.parse_args(["reconstruct", "a.jpg", "-o", "out", "--no-flip-test"]).flip_test is False
    assert parser.parse_args(["reconstruct", "a.jpg", "-o", "out"]).shift_test is True
    assert parser.parse_args(["reconstruct", "a.jpg", "-o", "out", "--no-shift-test"]).shift_test is False
    monkeypatch.delenv("FACERECON_FLIP_TEST", raising=False)
    assert app.parse_args([]).flip_test is True and app.parse_args(["--no-flip-test"]).flip_test is False
    monkeypatch.setenv("FACERECON_FLIP_TEST", "0")
    assert app.parse_args([]).flip_test is False
    monkeypatch.delenv("FACERECON_SHIFT_TEST", raising=False)
    assert app.parse_args([]).shift_test is True and app.parse_args(["--no-shift-test"]).shift_test is False
    monkeypatch.setenv("FACERECON_SHIFT_TEST", "false")
    assert app.parse_args([]).shift_test is False
    assert parser.parse_args(["reconstruct", "a.jpg", "-o", "out"]).orientation_test is True
    assert parser.parse_args(["reconstruct", "a.jpg", "-o", "out", "--no-orientation-test"]).orientation_test is False
    monkeypatch.delenv("FACERECON_ORIENTATION_TEST", raising=False)
    assert app.parse_args([]).orientation_test is True
    assert app.parse_args(["--no-orientation-test"]).orientation_test is False
    monkeypatch.setenv("FACERECON_ORIENTATION_TEST", "0")
    assert app.parse_args([]).orientation_test is False
