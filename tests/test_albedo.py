from __future__ import annotations

import pytest
import torch

from facerecon.morphable.albedo import (
    ALBEDO_FILE,
    DEFAULT_ALBEDO,
    albedo_metadata,
    default_albedo_path,
    fit_albedo_coefficients,
    load_albedo_model,
    reconstruction_rmse,
    resolve_albedo_path,
    save_albedo_model,
    topology_hash,
)
from facerecon.morphable.model import AlbedoModel

ICT_FACE_VERTICES = 9409


@pytest.fixture(scope="module")
def model() -> AlbedoModel:
    return load_albedo_model(DEFAULT_ALBEDO)


def test_bundled_model_loads(model):
    assert default_albedo_path().is_file()
    assert resolve_albedo_path("default") == default_albedo_path()
    k = model.n_components
    assert model.mean.shape == (ICT_FACE_VERTICES, 3)
    assert model.basis.shape == (k, ICT_FACE_VERTICES, 3)
    assert model.std.shape == (k,)
    assert k >= 40
    meta = albedo_metadata()
    assert meta["n_vertices"] == str(ICT_FACE_VERTICES) and meta["n_components"] == str(k)
    for key in ("surface", "topology_hash", "data", "licence", "date", "colour_space"):
        assert meta.get(key), key
    # every file of the model folder stays small
    for path in default_albedo_path().parent.iterdir():
        assert path.stat().st_size < 16 * 2**20, path


def test_bundled_model_statistics(model):
    u = model.basis.reshape(model.n_components, -1).double()
    assert torch.allclose(u @ u.T, torch.eye(model.n_components, dtype=torch.float64), atol=1e-4)
    std = model.std
    assert (std > 0).all() and (std[:-1] >= std[1:]).all()
    mean = model.mean
    assert mean.min() >= 0 and mean.max() <= 1
    r, g, b = mean.mean(0)
    assert r > g > b  # skin-like
    assert 0.2 < float(mean.mean()) < 0.8
    from safetensors import safe_open

    with safe_open(str(default_albedo_path()), framework="pt") as f:
        ev = f.get_tensor("explained_variance")
    assert ev.shape == std.shape
    assert (ev[1:] >= ev[:-1]).all() and 0 < ev[0] and ev[-1] <= 1 + 1e-6


def test_forward_and_truncation(model):
    coeffs = torch.zeros(2, model.n_components)
    out = model(coeffs)
    assert out.shape == (2, ICT_FACE_VERTICES, 3)
    assert torch.allclose(out[0], model.mean.clamp(0, 1))
    coeffs[1, 0] = 3.0
    out = model(coeffs)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out[0], out[1])
    small = load_albedo_model(DEFAULT_ALBEDO, n_components=5)
    assert small.n_components == 5
    assert torch.equal(small.basis, model.basis[:5]) and torch.equal(small.std, model.std[:5])


def test_topology_check_against_morphable_model(model, ict_dir):
    from facerecon.morphable.ict import load_morphable_data

    data = load_morphable_data(ict_dir, surface="face")
    loaded = load_albedo_model(DEFAULT_ALBEDO, n_vertices=data.mean.shape[0], faces=data.faces)
    assert loaded.mean.shape[0] == data.mean.shape[0]
    assert albedo_metadata()["topology_hash"] == topology_hash(data.faces, data.mean.shape[0])
    with pytest.raises(ValueError, match="topology"):
        load_albedo_model(DEFAULT_ALBEDO, faces=data.faces.flip(1))


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_albedo_model(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        load_albedo_model(tmp_path)  # a folder without the model file
    with pytest.raises(ValueError, match="vertices"):
        load_albedo_model(DEFAULT_ALBEDO, n_vertices=1234)
    with pytest.raises(ValueError, match="n_components"):
        load_albedo_model(DEFAULT_ALBEDO, n_components=0)
    with pytest.raises(ValueError, match="n_components"):
        load_albedo_model(DEFAULT_ALBEDO, n_components=10_000)


def synthetic_model(n: int = 200, k: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([0.6, 0.45, 0.35]) + 0.02 * torch.randn(n, 3, generator=g)
    q, _ = torch.linalg.qr(torch.randn(3 * n, k, generator=g, dtype=torch.float64))
    basis = q.T.float().reshape(k, n, 3)
    std = torch.linspace(1.0, 0.1, k)
    return mean, basis, std


def test_save_load_roundtrip(tmp_path):
    mean, basis, std = synthetic_model()
    ev = torch.cumsum(std**2, 0) / (std**2).sum()
    path = save_albedo_model(tmp_path / "m.safetensors", mean, basis, std, ev, {"surface": "face", "extra": [1, 2]})
    m = load_albedo_model(path, n_vertices=200)
    assert torch.equal(m.mean, mean) and torch.equal(m.basis, basis) and torch.equal(m.std, std)
    meta = albedo_metadata(path)
    assert meta["n_vertices"] == "200" and meta["n_components"] == "8" and meta["extra"] == "[1, 2]"
    save_albedo_model(tmp_path / ALBEDO_FILE, mean, basis, std, ev, {})
    assert load_albedo_model(tmp_path).n_components == 8  # a folder resolves to its albedo_model.safetensors
    with pytest.raises(ValueError):
        save_albedo_model(tmp_path / "bad.safetensors", mean, basis[:, :10], std, ev, {})


def test_fit_coefficients_recovers_truth():
    mean, basis, std = synthetic_model()
    g = torch.Generator().manual_seed(1)
    c = torch.randn(4, 8, generator=g)
    albedo = mean + torch.einsum("bk,knc->bnc", c * std, basis)
    weights = torch.ones(4, 200)
    est = fit_albedo_coefficients(mean, basis, std, albedo, weights, noise=1e-4)
    assert torch.allclose(est, c, atol=1e-3)


def test_reconstruction_error_on_synthetic_heldout():
    mean, basis, std = synthetic_model()
    g = torch.Generator().manual_seed(2)
    c = torch.randn(6, 8, generator=g)
    albedo = mean + torch.einsum("bk,knc->bnc", c * std, basis) + 0.005 * torch.randn(6, 200, 3, generator=g)
    weights = (torch.rand(6, 200, generator=g) > 0.4).float()  # partial observations
    err = reconstruction_rmse(mean, basis, std, albedo, weights, ks=(0, 2, 4, 8))
    assert set(err) == {0, 2, 4, 8}
    assert err[8] < err[4] < err[2] < err[0]
    assert err[8] < 0.2 * err[0]
    with pytest.raises(ValueError):
        reconstruction_rmse(mean, basis, std, albedo, weights, ks=(9,))
