from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facerecon.skin import (
    exclusion_mask,
    fit_skin_model,
    polygon_mask,
    reference_mask,
    rgb_to_ycbcr,
    skin_mask,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
AFLW2000_DEV = SHARED / "aflw2000-3d-dev"
#: Frontal-ish dev images (|yaw|, |pitch| < 15 degrees).
DEV_NAMES = ("image00042", "image00050", "image00093", "image00159", "image00255")


def _lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return a + t * (b - a)


def cheek_polygons(lmk: torch.Tensor) -> list[torch.Tensor]:
    """Two small cheek quadrilaterals (B, 4, 2), independent of the module's reference polygons."""
    out = []
    for eye, ala, corner, jaw_hi, jaw_lo in ((40, 31, 48, 2, 4), (47, 35, 54, 14, 12)):
        e, a, c = lmk[:, eye], lmk[:, ala], lmk[:, corner]
        out.append(torch.stack([
            _lerp(e, a, 0.45),
            _lerp(a, c, 0.4),
            _lerp(_lerp(a, c, 0.4), lmk[:, jaw_lo], 0.45),
            _lerp(_lerp(e, a, 0.45), lmk[:, jaw_hi], 0.45),
        ], dim=1))
    return out


def hull_mask(lmk: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    m = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(m, cv2.convexHull(lmk.astype(np.float32)).astype(np.int32)[:, 0], 1)
    return m


@pytest.fixture(scope="module")
def dev_batch():
    import cv2

    sio = pytest.importorskip("scipy.io")
    if not AFLW2000_DEV.is_dir():
        pytest.skip(f"{AFLW2000_DEV} not found")
    images, lmks, masks = [], [], []
    for name in DEV_NAMES:
        img = cv2.imread(str(AFLW2000_DEV / f"{name}.jpg"))
        if img is None:
            pytest.skip(f"{name}.jpg not found")
        lmk = sio.loadmat(str(AFLW2000_DEV / f"{name}.mat"))["pt3d_68"][:2].T - 1.0  # MATLAB 1-based -> 0-based
        images.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        lmks.append(lmk)
        masks.append(hull_mask(lmk, *img.shape[:2]))
    image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return image, torch.from_numpy(np.stack(masks))[:, None].float(), torch.from_numpy(np.stack(lmks)).float()


def region_mean(prob: torch.Tensor, lmk: torch.Tensor, poly: torch.Tensor | list[int]) -> torch.Tensor:
    verts = lmk[:, list(poly)] if isinstance(poly, list) else poly
    m = polygon_mask(verts, prob.shape[2], prob.shape[3]).float()
    return (prob * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1)


def test_dev_faces_eyes_mouth_cheeks(dev_batch):
    image, face, lmk = dev_batch
    prob = skin_mask(image, face, lmk)
    assert prob.shape == face.shape and prob.dtype == image.dtype
    assert torch.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    assert (prob[face == 0] == 0).all()
    for poly in (list(range(36, 42)), list(range(42, 48)), list(range(60, 68))):
        assert (region_mean(prob, lmk, poly) < 0.1).all(), poly
    for poly in cheek_polygons(lmk):
        assert (region_mean(prob, lmk, poly) > 0.5).all()
    # most of the face region is skin
    coverage = ((prob > 0.5).float() * face).sum((1, 2, 3)) / face.sum((1, 2, 3))
    assert (coverage > 0.4).all()


def synthetic_face(size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """A uniform skin-coloured ellipse with a dark 'sunglasses' band over the eyes and landmarks laid out on it."""
    import cv2

    img = np.full((size, size, 3), (40, 90, 40), np.uint8)  # green background
    c = size / 2
    face = np.zeros((size, size), np.uint8)
    cv2.ellipse(face, (int(c), int(c)), (int(0.33 * size), int(0.42 * size)), 0, 0, 360, 1, -1)
    img[face > 0] = (205, 150, 125)
    rng = np.random.default_rng(0)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    # landmarks: a generic frontal layout scaled into the ellipse
    s = size / 128
    lmk = np.zeros((68, 2))
    lmk[0:17] = [(c + 40 * s * np.cos(a), c - 5 * s + 45 * s * np.sin(a)) for a in np.linspace(np.pi, 0, 17)]
    lmk[17:22] = [(c - 28 * s + 5 * s * i, c - 22 * s) for i in range(5)]
    lmk[22:27] = [(c + 8 * s + 5 * s * i, c - 22 * s) for i in range(5)]
    lmk[27:31] = [(c, c - 12 * s + 5 * s * i) for i in range(4)]
    lmk[31:36] = [(c - 8 * s + 4 * s * i, c + 10 * s) for i in range(5)]
    eye = np.array([(-9, 0), (-5, -3), (0, -3), (4, 0), (0, 2), (-5, 2)]) * s
    lmk[36:42] = eye + (c - 16 * s, c - 12 * s)
    lmk[42:48] = eye + (c + 17 * s, c - 12 * s)
    mouth = np.array([(np.cos(a) * 13, np.sin(a) * 5) for a in np.linspace(np.pi, -np.pi, 13)[:12]]) * s
    lmk[48:60] = mouth + (c, c + 22 * s)
    lmk[60:68] = mouth[::3].repeat(2, 0)[:8] * 0.6 + (c, c + 22 * s)
    # sunglasses: a dark band across both eyes, larger than the eye polygons
    glasses = np.zeros((size, size), bool)
    glasses[int(c - 20 * s):int(c - 4 * s), int(c - 30 * s):int(c + 30 * s)] = True
    img[glasses & (face > 0)] = (25, 25, 30)
    image = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    return image, torch.from_numpy(face)[None, None].float(), torch.from_numpy(lmk)[None].float(), glasses


def test_synthetic_sunglasses():
    image, face, lmk, glasses = synthetic_face()
    prob = skin_mask(image, face, lmk)[0, 0]
    inside = face[0, 0] > 0
    glasses = torch.from_numpy(glasses) & inside
    excluded = exclusion_mask(lmk, *prob.shape)[0, 0]
    skin = inside & ~glasses & ~excluded
    assert prob[glasses].max() < 0.05
    assert prob[skin].mean() > 0.95
    assert (prob[skin] > 0.5).float().mean() > 0.98
    assert (prob[~inside] == 0).all()


def test_tiny_and_empty_faces_are_finite():
    image, face, lmk, _ = synthetic_face()
    # a tiny face (landmarks squeezed into a few pixels) and an empty face region
    tiny = (lmk - 64) * 0.03 + 64
    batch_img = image.expand(3, -1, -1, -1)
    batch_face = torch.cat([face, face, torch.zeros_like(face)])
    batch_lmk = torch.cat([lmk, tiny, lmk])
    prob = skin_mask(batch_img, batch_face, batch_lmk)
    assert torch.isfinite(prob).all()
    assert prob[2].sum() == 0
    # degenerate landmarks (all the same point) do not break it either
    flat = torch.full_like(lmk, 10.0)
    assert torch.isfinite(skin_mask(image, face, flat)).all()


def test_batch_independence_and_dtype():
    image, face, lmk, _ = synthetic_face()
    single = skin_mask(image, face, lmk)
    flipped = image.flip(-1)
    lmk_f = lmk.clone()
    lmk_f[..., 0] = image.shape[-1] - 1 - lmk_f[..., 0]
    batch = skin_mask(torch.cat([image, flipped]), torch.cat([face, face.flip(-1)]), torch.cat([lmk, lmk_f]))
    assert torch.allclose(batch[:1], single)
    d = skin_mask(image.double(), face.double(), lmk.double())
    assert d.dtype == torch.float64
    assert torch.allclose(d.float(), single, atol=1e-5)


def test_polygon_mask_matches_cv2():
    cv2 = pytest.importorskip("cv2")
    poly = torch.tensor([[[10.3, 5.2], [40.7, 12.1], [35.2, 44.8], [8.1, 30.5]]])
    m = polygon_mask(poly, 50, 50)[0, 0].numpy()
    contour = poly[0].numpy().astype(np.float32)[:, None]
    ref = np.array([[cv2.pointPolygonTest(contour, (float(x), float(y)), False) > 0 for x in range(50)]
                    for y in range(50)])
    assert (m == ref).all()
    dil = polygon_mask(poly, 50, 50, dilation=3.0)[0, 0]
    assert dil.sum() > m.sum() and (dil | torch.from_numpy(m)).equal(dil)
    line = polygon_mask(poly, 50, 50, dilation=1.0, closed=False)[0, 0]
    assert not line[25, 25] and line[5, 10]


def test_fit_skin_model_robust_to_outliers():
    g = torch.Generator().manual_seed(0)
    n = 4000
    skin = torch.tensor([0.8, 0.6, 0.5])[:, None] + 0.02 * torch.randn(3, n, generator=g)
    hair = torch.tensor([0.15, 0.1, 0.08])[:, None].expand(3, n // 4)
    img = torch.cat([skin, hair], 1).clamp(0, 1)[None, :, None]  # (1, 3, 1, M)
    ycc = rgb_to_ycbcr(img)
    model = fit_skin_model(ycc, torch.ones(1, 1, 1, img.shape[-1]))
    ref = rgb_to_ycbcr(torch.tensor([0.8, 0.6, 0.5])[None, :, None, None])[0, 1:, 0, 0]
    assert torch.allclose(model.chroma_mean[0], ref, atol=0.005)
    assert model.n_pixels[0] == img.shape[-1]
    empty = fit_skin_model(ycc, torch.zeros(1, 1, 1, img.shape[-1]))
    assert empty.n_pixels[0] == 0 and torch.isfinite(empty.chroma_cov).all()


def test_reference_region_avoids_exclusions():
    _, _, lmk, _ = synthetic_face()
    ref = reference_mask(lmk, 128, 128)
    ex = exclusion_mask(lmk, 128, 128)
    assert ref.sum() > 200
    assert (ref & ex).sum() < 0.05 * ref.sum()
    with pytest.raises(ValueError):
        exclusion_mask(lmk, 128, 128, exclude=("nose",))
    with pytest.raises(ValueError):
        skin_mask(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8), torch.zeros(1, 21, 2))
