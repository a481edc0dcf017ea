"""ONNX export of the regressor and the onnxruntime back-end (tiny config)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="onnx not installed (pip install 'facerecon[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'facerecon[onnx]')")

from facerecon.inference.onnx_backend import ONNX_OUTPUTS, OnnxRegressor, cached_onnx_path  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return tiny_model.export_onnx(path)  # includes the parity check (atol 1e-4) against torch


@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_parity_dynamic_batch(tiny_model, exported, batch):
    x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    got = OnnxRegressor(exported, threads=1).run(x)
    with torch.no_grad():
        out = tiny_model(x, landmarks_only=True)
    p = out.params
    ref = (p.identity, p.expression, p.albedo, p.lighting, p.rotation, p.translation, p.scale, out.landmarks_2d,
           out.attention)
    assert len(got) == len(ONNX_OUTPUTS)
    for name, r, g in zip(ONNX_OUTPUTS, ref, got, strict=True):
        assert g.shape == r.shape, name
        assert float((r - g).abs().max()) < 1e-4, name


def test_onnx_backend_reconstruct_matches_torch(tiny_model, exported, astronaut):
    from facerecon.inference.pipeline import Reconstructor

    box = [170.0, 30.0, 300.0, 180.0]
    ref = Reconstructor(tiny_model)(astronaut, box=box)[0]
    got = Reconstructor(tiny_model, backend="onnx", onnx_path=exported)(astronaut, box=box)[0]
    assert np.abs(ref.vertices - got.vertices).max() < 1e-2  # mm
    assert np.abs(ref.landmarks - got.landmarks).max() < 1e-2  # pixels
    assert abs(ref.yaw - got.yaw) < 1e-3
    ref_f = Reconstructor(tiny_model, flip_test=True)(astronaut, box=box)[0]
    got_f = Reconstructor(tiny_model, backend="onnx", onnx_path=exported, flip_test=True)(astronaut, box=box)[0]
    assert np.abs(ref_f.landmarks - got_f.landmarks).max() < 1e-2 and abs(ref_f.yaw - got_f.yaw) < 1e-3
    assert np.abs(ref_f.landmarks - ref.landmarks).max() > 1e-3  # the flip test changes the result
    ref_s = Reconstructor(tiny_model, flip_test=True, shift_test=True)(astronaut, box=box)[0]
    got_s = Reconstructor(tiny_model, backend="onnx", onnx_path=exported, flip_test=True, shift_test=True)(
        astronaut, box=box)[0]
    assert np.abs(ref_s.landmarks - got_s.landmarks).max() < 1e-2 and abs(ref_s.yaw - got_s.yaw) < 1e-3
    assert np.abs(ref_s.landmarks - ref_f.landmarks).max() > 1e-3  # the shift test changes the result
    from facerecon.inference.crop import crop_face

    size = tiny_model.config.input_size  # the reported crop is the face's own crop (view 0), not a shifted one
    assert np.array_equal(ref_s.crop, crop_face(np.asarray(astronaut), ref_s.box, size))


def test_cached_export_and_errors(tiny_model, tmp_path):
    from facerecon.inference.pipeline import Reconstructor

    path = cached_onnx_path(tiny_model, cache_dir=tmp_path)
    assert path.is_file() and path.parent == tmp_path / "onnx"
    mtime = path.stat().st_mtime_ns
    assert cached_onnx_path(tiny_model, cache_dir=tmp_path) == path and path.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="backend"):
        Reconstructor(tiny_model, backend="tensorrt")
    with pytest.raises(FileNotFoundError, match="not found"):
        OnnxRegressor(tmp_path / "missing.onnx")


def test_cli_export_onnx(tiny_model, tmp_path, capsys):
    from facerecon.cli import main

    tiny_model.save_pretrained(tmp_path / "model")
    assert main(["export-onnx", "--model", str(tmp_path / "model"), "-o", str(tmp_path / "r.onnx")]) == 0
    assert (tmp_path / "r.onnx").is_file() and "parity with torch checked" in capsys.readouterr().out
