from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facerecon.errors import MorphableModelNotFoundError
from facerecon.morphable import ict
from facerecon.morphable.ict import MIRROR_68, find_ict_facekit, load_morphable_data
from facerecon.morphable.model import AlbedoModel, MorphableModel


@pytest.fixture(scope="module")
def data(ict_dir):
    return load_morphable_data(ict_dir)


def test_shapes_and_counts(data):
    n = data.mean.shape[0]
    assert n == 9409  # every vertex of ICT's M_Face material
    assert data.faces.shape == (18460, 3)  # 9230 quads split in two
    assert data.identity_basis.shape == (100, n, 3)
    assert data.expression_basis.shape == (53, n, 3)
    assert data.face_uvs.shape == data.faces.shape
    assert int(data.faces.min()) == 0 and int(data.faces.max()) == n - 1
    assert int(data.face_uvs.max()) == data.uvs.shape[0] - 1
    assert data.uvs.min() >= 0 and data.uvs.max() <= 1
    assert len(data.expression_names) == 53 and data.expression_names[26] == "jawOpen"


def test_identity_basis_orthonormal(data):
    u = data.identity_basis.reshape(100, -1).double()
    err = (u @ u.T - torch.eye(100, dtype=torch.float64)).abs().max().item()
    assert err < 1e-5
    assert torch.all(data.identity_std[:-1] >= data.identity_std[1:])  # sorted by variance
    ev = data.explained_variance
    assert torch.all(ev[1:] >= ev[:-1]) and abs(ev[-1].item() - 1.0) < 1e-5
    assert 0.3 < ev[0].item() < 0.6  # the first mode explains a large share (0.41 measured)


def test_reorthonormalised_basis_spans_the_ict_modes(data, ict_dir):
    """The SVD basis reproduces ICT's own (non-orthogonal) identity modes exactly."""
    src = np.load(ict_dir / ict.ICT_NPZ_NAME)
    idx = data.source_vertex_index.numpy()
    mode = (src["identities"][7, idx] - src["neutral"][idx]).astype(np.float64) * 10.0  # mm
    u = data.identity_basis.reshape(100, -1).double().numpy()
    coeff = u @ mode.reshape(-1)
    recon = (coeff @ u).reshape(-1, 3)
    assert np.abs(recon - mode).max() < 1e-3  # mm


def test_first_identity_mode_plausible_displacement(data):
    disp = (3 * data.identity_std[0] * data.identity_basis[0]).norm(dim=-1)
    assert 15.0 < disp.max().item() < 60.0  # mm: +3 sigma changes the head by centimetres, not metres
    assert 3.0 < disp.mean().item() < 25.0


def test_landmarks_on_the_right_features(data):
    lmk = data.mean[data.landmark_index]
    x, y, z = lmk.unbind(-1)
    # Image-left eye (36 outer, 39 inner) is on the subject's right (-x); corners in order along x.
    assert x[36] < x[39] < 0 < x[42] < x[45]
    assert x[48] < 0 < x[54]  # mouth corners
    # The nose tip is the most frontal landmark and within 0.5 mm of the most frontal vertex.
    assert int(z.argmax()) == 30
    assert data.mean[:, 2].max().item() - z[30].item() < 0.5
    # Vertical order: brows above eyes above nose tip above mouth above chin.
    assert y[19] > y[37] > y[30] > y[51] > y[57] > y[8]
    # Eye width is plausible (mm).
    assert 20.0 < (lmk[39] - lmk[36]).norm().item() < 40.0


def test_mirror_maps(data):
    flip = torch.tensor([-1.0, 1.0, 1.0])
    lmk = data.mean[data.landmark_index]
    assert (lmk[list(MIRROR_68)] * flip - lmk).norm(dim=-1).max().item() < 0.1
    assert sorted(MIRROR_68) == list(range(68))
    assert [MIRROR_68[MIRROR_68[i]] for i in range(68)] == list(range(68))  # an involution
    mirrored = data.mean[data.vertex_mirror] * flip
    assert (mirrored - data.mean).norm(dim=-1).max().item() < 0.5


def test_normals_point_outward(data):
    from facerecon.geometry import vertex_normals

    n = vertex_normals(data.mean[None], data.faces)[0]
    assert n[data.landmark_index[30], 2] > 0.9  # nose tip faces +z
    assert n[data.landmark_index[0], 0] < -0.5  # image-left jaw end faces -x


def test_expression_basis_range(data):
    disp = data.expression_basis.norm(dim=-1).amax(1)
    jaw_open = data.expression_names.index("jawOpen")
    assert 10.0 < disp[jaw_open].item() < 60.0  # mm
    assert torch.all(disp < 80.0)


def test_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch, ict_dir):
    monkeypatch.setenv("FACERECON_CACHE", str(tmp_path))
    first = load_morphable_data(ict_dir)
    files = list((tmp_path / "morphable").glob("*.safetensors"))
    assert len(files) == 1 and first.source_hash in files[0].name
    mtime = files[0].stat().st_mtime_ns
    second = load_morphable_data(ict_dir)
    assert files[0].stat().st_mtime_ns == mtime
    assert torch.equal(first.mean, second.mean) and second.expression_names == first.expression_names
    # Without any source the cache is the last resort.
    monkeypatch.setattr(ict, "find_ict_facekit", lambda path=None: None)
    third = load_morphable_data()
    assert torch.equal(third.identity_basis, first.identity_basis)


def test_resolution_order_and_errors(tmp_path, monkeypatch, ict_dir):
    assert find_ict_facekit(ict_dir / ict.ICT_NPZ_NAME) == ict_dir  # explicit npz path
    monkeypatch.setenv("FACERECON_ICT", str(ict_dir))
    assert find_ict_facekit() == ict_dir
    monkeypatch.setenv("FACERECON_ICT", str(tmp_path))
    with pytest.raises(MorphableModelNotFoundError, match="FACERECON_ICT"):
        find_ict_facekit()
    with pytest.raises(MorphableModelNotFoundError, match="ICT-VGL/ICT-FaceKit"):
        find_ict_facekit(tmp_path / "nowhere")
    monkeypatch.delenv("FACERECON_ICT")
    monkeypatch.setenv("FACERECON_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(ict, "_default_search_roots", lambda: [tmp_path])
    with pytest.raises(MorphableModelNotFoundError, match="MIT"):
        load_morphable_data()


def test_morphable_module(data):
    mm = MorphableModel(data, n_identity=20)
    assert mm.n_identity == 20 and mm.n_expression == 53
    ident = torch.zeros(2, 20)
    ident[1, 0] = 3.0
    expr = torch.zeros(2, 53)
    v = mm.shape(ident, expr)
    assert v.shape == (2, 9409, 3)
    assert torch.allclose(v[0], data.mean)
    assert torch.allclose(v[1] - v[0], 3 * data.identity_std[0] * data.identity_basis[0], atol=1e-4)
    assert mm.state_dict() == {}  # bases are non-persistent buffers
    with pytest.raises(ValueError, match="identity"):
        mm.shape(torch.zeros(1, 5), expr[:1])
    with pytest.raises(ValueError, match="n_identity"):
        MorphableModel(data, n_identity=101)


def test_uniform_albedo_model():
    am = AlbedoModel.uniform(10, 3)
    a = am(torch.zeros(1, 3))
    assert torch.allclose(a[0, 0], torch.tensor([0.62, 0.46, 0.38]))
    a = am(torch.tensor([[1.0, 0.0, 0.0]]))
    assert abs(a[0, 0, 0].item() - (0.62 + 0.12)) < 1e-6 and abs(a[0, 0, 1].item() - 0.46) < 1e-6
    with pytest.raises(ValueError, match="albedo coefficients"):
        am(torch.zeros(1, 4))


def test_no_ict_data_in_the_repository():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.split()
    assert not [f for f in out if f.endswith((".npz", ".npy", ".mat", ".pts"))]
    assert not [f for f in out if "ict_face" in f.lower() and f.endswith(".safetensors")]
    json.dumps(out)  # the listing is plain text
