from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from facerecon.config import CROP_SCALE_RANGE, FaceReconConfig, check_crop_scale
from facerecon.errors import ConfigError
from facerecon.geometry import crop_affine
from facerecon.morphable.ict import MIRROR_68
from training.augment import AugmentConfig, Augmenter, GeometricParams
from training.data import (
    EXTENDED_MIRROR,
    FORBIDDEN_DIR,
    N_LANDMARKS,
    SOURCE_IDS,
    SOURCES,
    RealFaceDataset,
    data_root,
    extend_landmarks,
    load_300w,
    load_aflw,
    load_utkface,
    make_splits,
    read_rgb,
    scale_box,
    split_sizes,
)

S = 128


@pytest.fixture(scope="module")
def root():
    try:
        path = data_root()
    except FileNotFoundError as e:
        pytest.skip(f"training data not available: {e}")
    for folder in ("300w", "aflw-crops", "utkface"):
        if not (path / folder).is_dir():
            pytest.skip(f"training data set {path / folder} not available")
    return path


@pytest.fixture(scope="module")
def records(root):
    return {"300w": load_300w(root), "aflw": load_aflw(root), "utkface": load_utkface(root)}


@pytest.fixture(scope="module")
def splits(root, records):
    recs = [r for s in SOURCES for r in records[s]]
    return make_splits(seed=0, records=recs)


# ---------------------------------------------------------------------------------------------------------------------
# layout


def test_extended_mirror_is_an_involution_and_commutes_with_extend():
    m = torch.tensor(EXTENDED_MIRROR)
    assert m.shape == (N_LANDMARKS,)
    assert torch.equal(m[m], torch.arange(N_LANDMARKS))
    assert list(EXTENDED_MIRROR[:68]) == list(MIRROR_68)
    assert EXTENDED_MIRROR[68:] == (69, 68, 70)
    x = torch.randn(4, 68, 3)
    ext = extend_landmarks(x)
    assert ext.shape == (4, 71, 3)
    torch.testing.assert_close(ext[:, 68], x[:, 36:42].mean(1))
    torch.testing.assert_close(ext[:, 70], x[:, 60:68].mean(1))
    flip = torch.tensor([-1.0, 1.0, 1.0])
    mirrored68 = (x * flip)[:, list(MIRROR_68)]
    torch.testing.assert_close(extend_landmarks(mirrored68), (ext * flip)[:, m])


# ---------------------------------------------------------------------------------------------------------------------
# sources


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_loads(records, source):
    recs = records[source][:: max(1, len(records[source]) // 5)][:5]
    ds = RealFaceDataset(recs, size=S, augment=False)
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, S, S) and s["image"].dtype == torch.float32
        assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
        assert s["landmarks"].shape == (N_LANDMARKS, 2) and s["landmarks"].dtype == torch.float32
        assert s["weights"].shape == (N_LANDMARKS,) and s["weights"].dtype == torch.float32
        assert torch.isfinite(s["landmarks"]).all()
        assert s["source"] == SOURCE_IDS[source] and s["index"] == i
        assert s["has_landmarks"] == (source != "utkface")
        assert math.isnan(s["yaw"]) == (source != "aflw")
        if source == "300w":
            assert (s["weights"] > 0).all()
            assert float(s["landmarks"].min()) >= -0.5 and float(s["landmarks"].max()) <= S - 0.5
        if source == "utkface":
            assert (s["weights"] == 0).all() and 0 <= s["race"] <= 4
    # Deterministic without augmentation.
    torch.testing.assert_close(ds[0]["image"], ds[0]["image"], rtol=0, atol=0)


def test_300w_canonical_crop(records):
    ds = RealFaceDataset(records["300w"][::300], size=S, augment=False)
    for i in range(len(ds)):
        lmk = ds[i]["landmarks"][:68].numpy()
        lo, hi = lmk.min(0), lmk.max(0)
        np.testing.assert_allclose(0.5 * (lo + hi), [(S - 1) / 2] * 2, atol=0.5)
        assert abs((hi - lo).max() - S / 1.6) <= 0.5


def test_scale_box_about_centre():
    box = np.array([10.0, 20.0, 50.0, 100.0])
    np.testing.assert_allclose(scale_box(box, 0.5), [20.0, 40.0, 40.0, 80.0])
    np.testing.assert_allclose(scale_box(box, 1.0), box)
    assert box.tolist() == [10.0, 20.0, 50.0, 100.0]  # input unchanged


@pytest.mark.parametrize("crop_scale", [1.4, 1.8])
def test_crop_scale_sets_the_face_size_in_the_crop(records, crop_scale):
    recs = records["300w"][::300]
    ds = RealFaceDataset(recs, size=S, augment=False, crop_scale=crop_scale)
    for i in range(len(ds)):
        lmk = ds[i]["landmarks"][:68].numpy()
        lo, hi = lmk.min(0), lmk.max(0)
        np.testing.assert_allclose(0.5 * (lo + hi), [(S - 1) / 2] * 2, atol=0.5)
        assert abs((hi - lo).max() - S / crop_scale) <= 0.5
    aug = RealFaceDataset(recs, size=S, augment=True, crop_scale=crop_scale)
    assert aug.augmenter.crop_scale == crop_scale
    face = aug.augmenter.face_box(GeometricParams())
    assert abs((face[2] - face[0]) - S / crop_scale) < 1e-6
    with pytest.raises(ValueError, match="crop_scale"):
        RealFaceDataset(recs, size=S, augment=Augmenter(S), crop_scale=crop_scale)
    with pytest.raises(ValueError, match="crop_scale"):
        RealFaceDataset(recs, size=S, crop_scale=0.9)


@pytest.mark.parametrize("bad", [0.9, 3.5, float("nan"), "1.4", True])
def test_crop_scale_bounds_are_shared(records, bad):
    """The model config, the dataset and the augmenter accept the same crop scales (CROP_SCALE_RANGE)."""
    recs = records["300w"][:2]
    for make in (lambda c: FaceReconConfig(crop_scale=c), lambda c: RealFaceDataset(recs, size=S, crop_scale=c),
                 lambda c: Augmenter(S, crop_scale=c)):
        with pytest.raises(ConfigError, match="crop_scale must be a number in \\[1, 3\\]"):
            make(bad)
        for ok in CROP_SCALE_RANGE:
            make(ok)
    assert check_crop_scale(1.3) == 1.3


def test_aflw_mapping(root, records):
    recs = records["aflw"]
    with np.load(root / "aflw-crops" / "landmarks.npz") as d:
        pts, vis = d["pts21"][:50], d["visible"][:50]
    for r, p, v in zip(recs[:50], pts, vis, strict=True):
        assert (r.weights[[36, 68, 30, 70, 8]] > 0).tolist() == v[[6, 7, 14, 18, 20]].tolist()
        if v[7]:
            np.testing.assert_allclose(r.landmarks[68], p[7] - 1.0, atol=1e-5)  # 1-based -> 0-based
        assert np.isfinite(r.landmarks).all()
        assert (r.weights[[s for s in range(N_LANDMARKS) if s not in (17, 19, 21, 22, 24, 26, 36, 68, 39, 42, 69, 45,
                                                                        2, 31, 30, 35, 14, 48, 70, 54, 8)]] == 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# augmentation


def test_flip_matches_mirrored_crop(records):
    rec = records["300w"][5]
    image = read_rgb(rec.image_path)
    aug = Augmenter(S, AugmentConfig().geometric_only())
    rng = np.random.default_rng(0)
    plain = aug(image, rec.box, rec.landmarks, rec.weights, rng, params=GeometricParams())
    flipped = aug(image, rec.box, rec.landmarks, rec.weights, rng, params=GeometricParams(flip=True))
    assert flipped.flipped and not plain.flipped
    diff = np.abs(flipped.image.astype(int) - plain.image[:, ::-1].astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 3
    # Image-left outer eye corner (36) of the flipped sample = mirrored image-right outer corner (45) of the original.
    np.testing.assert_allclose(flipped.landmarks[36], [S - 1 - plain.landmarks[45, 0], plain.landmarks[45, 1]],
                               atol=1e-3)
    expected = plain.landmarks[list(EXTENDED_MIRROR)] * [-1, 1] + [S - 1, 0]
    np.testing.assert_allclose(flipped.landmarks, expected, atol=1e-3)
    np.testing.assert_array_equal(flipped.weights, plain.weights[list(EXTENDED_MIRROR)])


@pytest.mark.parametrize("large", [False, True], ids=["rot30", "rot180"])
@pytest.mark.parametrize("seed", range(6))
def test_affine_moves_a_dot_with_its_landmark(seed, large):
    rng = np.random.default_rng(seed)
    h, w = 240, 300
    box = np.array([40.3, 20.7, 40.3 + 190.0, 20.7 + 190.0])
    landmarks = np.zeros((N_LANDMARKS, 2))
    landmarks[36] = [box[0] + rng.uniform(60, 130), box[1] + rng.uniform(60, 130)]
    weights = np.zeros(N_LANDMARKS, dtype=np.float32)
    weights[36] = 1
    yy, xx = np.mgrid[0:h, 0:w]
    blob = 255 * np.exp(-((xx - landmarks[36, 0]) ** 2 + (yy - landmarks[36, 1]) ** 2) / (2 * 2.5**2))
    image = np.repeat(np.round(blob).astype(np.uint8)[..., None], 3, axis=2)
    aug = Augmenter(S, AugmentConfig(large_rotation_p=1.0 if large else 0.0).geometric_only())
    res = aug(image, box, landmarks, weights, rng)
    assert abs(res.angle_deg) <= (180 if large else 30)
    j = EXTENDED_MIRROR.index(36) if res.flipped else 36  # 45 after a flip
    assert res.weights[j] == 1
    out = res.image[..., 0].astype(np.float64)
    out[out < 0.1 * out.max()] = 0
    oy, ox = np.mgrid[0:S, 0:S]
    centroid = np.array([(out * ox).sum(), (out * oy).sum()]) / out.sum()
    assert np.linalg.norm(centroid - res.landmarks[j]) < 0.25  # measured < 0.05 px; a half-pixel slip would fail


def test_large_rotation_draws_and_checks():
    rng = np.random.default_rng(0)
    plain = Augmenter(S)
    angles = np.array([plain.sample_geometry(rng).angle_deg for _ in range(4000)])
    assert np.abs(angles).max() <= 30
    # p = 0 draws no extra number: the same stream as the default config.
    off = Augmenter(S, AugmentConfig(large_rotation_p=0.0, large_rotation_deg=90.0))
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [plain.sample_geometry(a) for _ in range(50)] == [off.sample_geometry(b) for _ in range(50)]
    large = Augmenter(S, AugmentConfig(large_rotation_p=0.5, large_rotation_deg=180.0))
    angles = np.array([large.sample_geometry(rng).angle_deg for _ in range(4000)])
    assert np.abs(angles).max() <= 180 and np.abs(angles).max() > 170
    # Half the draws from +/- 180, of which 150 / 180 land beyond 30 degrees: 0.417.
    assert abs((np.abs(angles) > 30).mean() - 0.5 * 150 / 180) < 0.03
    with pytest.raises(ValueError, match="large_rotation_p"):
        Augmenter(S, AugmentConfig(large_rotation_p=1.5))
    with pytest.raises(ValueError, match="large_rotation_deg"):
        Augmenter(S, AugmentConfig(large_rotation_deg=200.0))


def test_large_rotation_drops_the_yaw_label(records):
    recs = records["aflw"][:40]
    assert all(math.isfinite(r.yaw) for r in recs)
    turned = Augmenter(S, AugmentConfig(rotation_deg=0.0, large_rotation_p=1.0, large_rotation_deg=180.0))
    kept = [math.isfinite(RealFaceDataset(recs, size=S, augment=a, seed=1)[i]["yaw"])
            for a in (Augmenter(S), turned) for i in range(0, 40, 4)]
    assert all(kept[:10]) and not any(kept[10:])


def test_identity_augmentation_is_the_canonical_crop_map():
    box = np.array([10.25, -3.5, 210.25, 196.5])
    m = Augmenter(S).affine(box, GeometricParams())
    np.testing.assert_allclose(m, crop_affine(torch.from_numpy(box)[None], S)[0].numpy(), atol=1e-9)


def test_augmentation_is_reproducible(records):
    recs = records["300w"][:3] + records["aflw"][:3]
    ds = RealFaceDataset(recs, size=S, augment=True, seed=3)
    a, b = ds[4], ds[4]
    torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
    torch.testing.assert_close(a["landmarks"], b["landmarks"], rtol=0, atol=0)
    ds.set_epoch(1)
    assert not torch.equal(ds[4]["image"], a["image"])


@pytest.mark.parametrize("kind", ["sunglasses", "mask", "hand"])
def test_occlusion_only_inside_face_box(records, kind):
    aug = Augmenter(S, AugmentConfig().geometric_only())
    recs = records["300w"][::400] + (records["utkface"][:2] if kind == "hand" else [])
    for n, rec in enumerate(recs):
        rng = np.random.default_rng(n)
        res = aug(read_rgb(rec.image_path), rec.box, rec.landmarks, rec.weights, rng)
        before = res.image.copy()
        assert aug.occlude(res.image, res.landmarks, res.weights, res.face_box, rng, kind=kind) == kind
        changed = np.abs(res.image.astype(int) - before.astype(int)).max(2) > 0
        assert changed.sum() > 20
        ys, xs = np.nonzero(changed)
        x0, y0, x1, y1 = res.face_box
        assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1


# ---------------------------------------------------------------------------------------------------------------------
# splits


def test_splits(records, splits):
    again = make_splits(seed=0, records=[r for s in SOURCES for r in records[s]])
    assert {k: [r.key for r in v] for k, v in splits.items()} == {k: [r.key for r in v] for k, v in again.items()}
    keys = {k: {r.key for r in v} for k, v in splits.items()}
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    assert sum(map(len, keys.values())) == sum(map(len, records.values()))
    sizes = split_sizes(splits)
    for source in SOURCES:
        n = len(records[source])
        for split, frac in zip(("train", "val", "test"), (0.7, 0.15, 0.15), strict=True):
            assert abs(sizes[split][source]["total"] / n - frac) <= 0.02, (source, split)
    # Groups (same photo, near-duplicates) never straddle splits; duplicate groups exist.
    where = defaultdict(set)
    for split, recs in splits.items():
        for r in recs:
            where[(r.source, r.group)].add(split)
            assert FORBIDDEN_DIR not in r.image_path.parts
    assert all(len(v) == 1 for v in where.values())
    sizes_by_group = defaultdict(int)
    for r in records["aflw"]:
        sizes_by_group[r.group] += 1
    assert sum(v > 1 for v in sizes_by_group.values()) > 100
    afw = {r.name: s for s, recs in splits.items() for r in recs if r.name.startswith("afw_111076519_")}
    assert len(afw) >= 2 and len(set(afw.values())) == 1


def test_data_root_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("FACERECON_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="FACERECON_DATA"):
        data_root()
    bench = tmp_path / FORBIDDEN_DIR
    bench.mkdir()
    with pytest.raises(ValueError, match=FORBIDDEN_DIR):
        data_root(bench)
