"""Skin-mask generation: per-pixel skin probability inside the face region, adapted to each face's own colours.

For every face a robust Gaussian colour model is fitted to the pixels of a central reference region (both cheeks and
the nose, built from the 68 landmarks and clipped to the face region), in the chroma plane of YCbCr. Every pixel of
the face region is then scored by its Mahalanobis distance to that model. Pixels that are much darker than the
fitted skin (glasses frames, hair, beard, nostrils, deep shadows) or much less saturated (grey hair, lenses,
specular glare) are suppressed, and the eyes, brows and mouth are cut out explicitly with slightly dilated landmark
polygons. Everything is batched torch code (point-in-polygon included) and runs on the input's device.

Convention: images (B, 3, H, W) RGB in [0, 1] (sRGB values as stored in the photo); landmarks (B, 68, 2) in pixels
of the same image with 0-based pixel centres (iBUG order, see ``../shared/300w/README.md``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "EXCLUDABLE_REGIONS",
    "SkinColourModel",
    "exclusion_mask",
    "fit_skin_model",
    "polygon_mask",
    "reference_mask",
    "rgb_to_ycbcr",
    "skin_mask",
    "skin_probability",
]

#: Names accepted by ``skin_mask(..., exclude=...)``: "mouth" is the outer lip polygon (lips and mouth interior),
#: "mouth_interior" only the inner lip polygon.
EXCLUDABLE_REGIONS: tuple[str, ...] = ("eyes", "brows", "mouth", "mouth_interior")

# iBUG-68 landmark groups (0-based).
_LEFT_EYE = tuple(range(36, 42))
_RIGHT_EYE = tuple(range(42, 48))
_LEFT_BROW = tuple(range(17, 22))
_RIGHT_BROW = tuple(range(22, 27))
_OUTER_LIP = tuple(range(48, 60))
_INNER_LIP = tuple(range(60, 68))
#: Nose reference polygon: inner eye corners, nose bridge top, alae and tip (nostril openings left out).
_NOSE = (39, 27, 42, 35, 30, 31)

#: Fallback chroma model (Cb, Cr in [0, 1]) used when a face has too few reference pixels: a broad skin prior.
_PRIOR_CHROMA_MEAN = (0.43, 0.585)
_PRIOR_CHROMA_STD = (0.035, 0.035)
_PRIOR_LUMA = 0.55
_PRIOR_SATURATION = 0.16
#: Floor on the chroma standard deviation (compression noise; about 2.5 levels of 255).
_MIN_CHROMA_STD = 0.01
#: Trimming radius of the robust fit (Mahalanobis units) and the 2D Gaussian variance kept inside it.
_TRIM = 2.5
_TRIM_VAR = (1.0 - math.exp(-_TRIM**2 / 2) * (1.0 + _TRIM**2 / 2)) / (1.0 - math.exp(-_TRIM**2 / 2))
_EPS = 1e-6
#: Histogram bins of the weighted medians (values in [0, 1]).
_MEDIAN_BINS = 1024
#: The low-chroma rejection needs the pixel to be at least this much less saturated than the skin (chroma units).
_LOW_CHROMA_MARGIN = 0.03


@dataclass
class SkinColourModel:
    """Per-face skin colour model fitted by :func:`fit_skin_model` (B = batch).

    Attributes:
        chroma_mean: (B, 2) mean (Cb, Cr).
        chroma_cov: (B, 2, 2) covariance of (Cb, Cr) (consistent with a Gaussian after trimming).
        luma: (B,) median luma Y of the reference skin.
        saturation: (B,) median chroma magnitude ``|(Cb, Cr) - 0.5|`` of the reference skin.
        n_pixels: (B,) number of reference pixels used (0 = the fallback prior was used).
    """

    chroma_mean: torch.Tensor
    chroma_cov: torch.Tensor
    luma: torch.Tensor
    saturation: torch.Tensor
    n_pixels: torch.Tensor


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """Full-range BT.601 (JPEG) YCbCr of RGB images.

    Args:
        image: (B, 3, H, W) RGB in [0, 1].

    Returns:
        (B, 3, H, W) Y, Cb, Cr in [0, 1] (neutral chroma = 0.5).

    Convention: channels-first; the RGB values are used as stored (no linearisation), as JPEG does.
    """
    r, g, b = image.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return torch.stack([y, cb, cr], dim=1)


def polygon_mask(
    vertices: torch.Tensor,
    height: int,
    width: int,
    dilation: torch.Tensor | float = 0.0,
    closed: bool = True,
) -> torch.Tensor:
    """Rasterise polygons (or thick polylines) at pixel centres, in pure torch.

    A pixel is inside when its centre is inside the closed polygon (even-odd rule) or within ``dilation`` pixels of
    one of its edges. With ``closed=False`` the vertices form an open polyline and only the distance test applies.

    Args:
        vertices: (B, P, 2) polygon vertices (x, y) in pixels, P >= 2.
        height: H.
        width: W.
        dilation: scalar or (B,) distance in pixels added around the polygon / polyline.
        closed: polygon (True) or polyline (False).

    Returns:
        (B, 1, H, W) bool.

    Convention: 0-based pixel centres (pixel (i, j) centred at x = i, y = j), x right, y down. Costs O(B P H W),
    evaluated edge by edge (peak memory O(B H W)).
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 2 or vertices.shape[1] < 2:
        raise ValueError(f"vertices must be (B, P, 2) with P >= 2, got {tuple(vertices.shape)}")
    b, p, _ = vertices.shape
    v = torch.nan_to_num(vertices.detach().to(torch.float32))
    r = torch.as_tensor(dilation, device=v.device, dtype=v.dtype).expand(b)[:, None, None]
    out = torch.zeros(b, 1, height, width, dtype=torch.bool, device=v.device)
    # Evaluate only inside the bounding window of all polygons of the batch (plus the dilation).
    pad = float(r.max()) + 1.0
    x0, y0 = (max(int(math.floor(float(v[..., k].min()) - pad)), 0) for k in (0, 1))
    x1 = min(int(math.ceil(float(v[..., 0].max()) + pad)) + 1, width)
    y1 = min(int(math.ceil(float(v[..., 1].max()) + pad)) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return out
    ys = torch.arange(y0, y1, device=v.device, dtype=v.dtype)[None, :, None]
    xs = torch.arange(x0, x1, device=v.device, dtype=v.dtype)[None, None, :]
    inside = torch.zeros(b, y1 - y0, x1 - x0, dtype=torch.bool, device=v.device)
    near = torch.zeros_like(inside)
    dilate = bool((r > 0).any()) or not closed
    n_edges = p if closed else p - 1
    for k in range(n_edges):
        a = v[:, k, :, None, None]  # (B, 2, 1, 1)
        c = v[:, (k + 1) % p, :, None, None]
        ax, ay, cx, cy = a[:, 0], a[:, 1], c[:, 0], c[:, 1]
        if closed:
            crosses = (ay > ys) != (cy > ys)
            t = (ys - ay) / torch.where(cy != ay, cy - ay, torch.ones_like(cy))
            inside = inside ^ (crosses & (xs < ax + t * (cx - ax)))
        if dilate:
            dx, dy = cx - ax, cy - ay
            s = (((xs - ax) * dx + (ys - ay) * dy) / (dx * dx + dy * dy).clamp_min(1e-12)).clamp(0.0, 1.0)
            d2 = (xs - ax - s * dx) ** 2 + (ys - ay - s * dy) ** 2
            near = near | (d2 <= r * r)
    out[:, 0, y0:y1, x0:x1] = inside | near
    return out


def _face_scale(landmarks: torch.Tensor) -> torch.Tensor:
    """Inter-ocular distance (B,) in pixels (eye centres), at least 1."""
    left = landmarks[:, list(_LEFT_EYE)].mean(1)
    right = landmarks[:, list(_RIGHT_EYE)].mean(1)
    return (right - left).norm(dim=-1).clamp_min(1.0)


def _check_landmarks(landmarks: torch.Tensor) -> None:
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (B, 68, 2) iBUG points, got {tuple(landmarks.shape)}")


def exclusion_mask(
    landmarks: torch.Tensor,
    height: int,
    width: int,
    exclude: Sequence[str] = ("eyes", "brows", "mouth"),
    dilation: float = 0.08,
) -> torch.Tensor:
    """Eye, brow and mouth regions from the 68 landmarks, slightly dilated.

    Eyes are the eyelid polygons (36-41, 42-47); brows the band between the brow points (17-21, 22-26) and the same
    points moved down by 0.12 inter-ocular distances; "mouth" the outer lip polygon (48-59) and "mouth_interior" the
    inner one (60-67). Every region is dilated by ``dilation`` inter-ocular distances.

    Args:
        landmarks: (B, 68, 2) iBUG landmarks in pixels.
        height: H.
        width: W.
        exclude: any of :data:`EXCLUDABLE_REGIONS`.
        dilation: dilation in inter-ocular distances.

    Returns:
        (B, 1, H, W) bool, True inside an excluded region.

    Convention: 0-based pixel centres.
    """
    _check_landmarks(landmarks)
    unknown = sorted(set(exclude) - set(EXCLUDABLE_REGIONS))
    if unknown:
        raise ValueError(f"unknown regions {unknown}; choose from {EXCLUDABLE_REGIONS}")
    iod = _face_scale(landmarks)
    r = dilation * iod
    out = torch.zeros(landmarks.shape[0], 1, height, width, dtype=torch.bool, device=landmarks.device)
    polys: list[tuple[torch.Tensor, torch.Tensor]] = []
    if "eyes" in exclude:
        polys += [(landmarks[:, list(_LEFT_EYE)], r), (landmarks[:, list(_RIGHT_EYE)], r)]
    if "brows" in exclude:
        down = torch.stack([torch.zeros_like(iod), 0.12 * iod], dim=-1)[:, None]
        for idx in (_LEFT_BROW, _RIGHT_BROW):
            top = landmarks[:, list(idx)]
            polys.append((torch.cat([top, (top + down).flip(1)], dim=1), r))
    if "mouth" in exclude:
        polys.append((landmarks[:, list(_OUTER_LIP)], r))
    if "mouth_interior" in exclude:
        polys.append((landmarks[:, list(_INNER_LIP)], r))
    for verts, rad in polys:
        out = out | polygon_mask(verts, height, width, rad)
    return out


def _lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return a + t * (b - a)


def _cheek_polygon(lmk: torch.Tensor, eye: tuple[int, int, int], nose: int, mouth: int,
                   jaw: tuple[int, int, int], depth: float) -> torch.Tensor:
    """Cheek polygon (B, 6, 2): below the eye, beside the nose and mouth corner, ``depth`` of the way to the jaw.

    ``eye`` = (outer corner, lower-lid outer, lower-lid inner) indices, ``nose`` the ala, ``mouth`` the corner and
    ``jaw`` three outline points from the eye level down to the mouth level.
    """
    outer, low_outer, low_inner = (lmk[:, i] for i in eye)
    ala, corner = lmk[:, nose], lmk[:, mouth]
    pts = [
        _lerp(low_inner, ala, 0.3),
        _lerp(ala, corner, 0.3),
        _lerp(corner, lmk[:, jaw[2]], 0.5 * depth),
        _lerp(ala, lmk[:, jaw[1]], depth),
        _lerp(low_outer, lmk[:, jaw[0]], depth),
        _lerp(_lerp(outer, low_outer, 0.5), ala, 0.3),
    ]
    return torch.stack(pts, dim=1)


def reference_mask(landmarks: torch.Tensor, height: int, width: int, depth: float = 0.6) -> torch.Tensor:
    """Central skin reference region: both cheeks and the nose, from the landmarks.

    Each cheek spans from just below the eye and beside the nose and mouth corner out to ``depth`` of the way to the
    jaw outline (so that on turned faces it stays off the background); the nose polygon joins the inner eye corners,
    the nose bridge top, the alae and the tip. Eyes, brows and mouth are not part of it.

    Args:
        landmarks: (B, 68, 2) iBUG landmarks in pixels.
        height: H.
        width: W.
        depth: how far towards the jaw outline the cheeks reach (0 to 1).

    Returns:
        (B, 1, H, W) bool.

    Convention: 0-based pixel centres; image-left / image-right as in the iBUG layout.
    """
    _check_landmarks(landmarks)
    left = _cheek_polygon(landmarks, (36, 41, 40), 31, 48, (1, 3, 5), depth)
    right = _cheek_polygon(landmarks, (45, 46, 47), 35, 54, (15, 13, 11), depth)
    nose = landmarks[:, list(_NOSE)]
    return polygon_mask(left, height, width) | polygon_mask(right, height, width) | polygon_mask(nose, height, width)


def _masked_median(values: torch.Tensor, weights: torch.Tensor, bins: int = _MEDIAN_BINS) -> torch.Tensor:
    """Weighted median over the last axis of ``values`` (B, C, M) in [0, 1], weights (B, M) >= 0; 0 where none.

    Computed from a ``bins``-bin histogram (resolution 1 / (bins - 1)), linear in M, instead of a sort.
    """
    idx = (values.clamp(0.0, 1.0) * (bins - 1)).round().long()
    w = weights[:, None].expand_as(values).to(values.dtype)
    hist = torch.zeros(*values.shape[:2], bins, device=values.device, dtype=values.dtype).scatter_add(-1, idx, w)
    cdf = hist.cumsum(-1)
    total = cdf[..., -1:]
    first = (cdf < 0.5 * total).sum(-1).clamp_max(bins - 1)
    med = first.to(values.dtype) / (bins - 1)
    return torch.where(total[..., 0] > 0, med, torch.zeros_like(med))


def _weighted_gaussian(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted mean (B, 2), covariance (B, 2, 2) and weight sum (B,) of samples ``x`` (B, 2, M), weights (B, M)."""
    total = w.sum(-1)
    safe = total.clamp_min(_EPS)
    mean = (x * w[:, None]).sum(-1) / safe[:, None]
    d = x - mean[..., None]
    dw = d * w[:, None]
    cov = torch.bmm(dw, d.transpose(1, 2)) / safe[:, None, None]
    return mean, cov, total


def _mahalanobis(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distance of ``x`` (B, 2, M) to per-item 2D Gaussians (mean (B, 2), cov (B, 2, 2)): (B, M)."""
    a, b, c = cov[:, 0, 0, None], cov[:, 0, 1, None], cov[:, 1, 1, None]
    det = (a * c - b * b).clamp_min(1e-20)
    u = x[:, 0] - mean[:, 0, None]
    v = x[:, 1] - mean[:, 1, None]
    d2 = (c * u * u - 2.0 * b * u * v + a * v * v) / det
    return d2.clamp_min(0.0).sqrt()


def _regularise(cov: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(2, device=cov.device, dtype=cov.dtype)
    return cov + (_MIN_CHROMA_STD**2) * eye


def fit_skin_model(ycbcr: torch.Tensor, reference: torch.Tensor, min_pixels: int = 32,
                   iterations: int = 2) -> SkinColourModel:
    """Robust Gaussian model of the skin chroma from a face's reference pixels.

    The chroma (Cb, Cr) is first located with the per-channel median and MAD; pixels within :data:`_TRIM` robust
    standard deviations start a trimmed Gaussian fit that is refined by ``iterations`` concentration steps (keep the
    pixels within Mahalanobis distance 2.5, re-estimate), with the covariance corrected for the trimming. Faces with
    fewer than ``min_pixels`` reference pixels get a broad generic skin prior instead.

    Args:
        ycbcr: (B, 3, H, W) Y, Cb, Cr in [0, 1] (:func:`rgb_to_ycbcr`).
        reference: (B, 1, H, W) bool or float weights of the reference pixels (> 0 = used).
        min_pixels: minimum number of reference pixels for a per-face fit.
        iterations: concentration steps after the median / MAD start.

    Returns:
        :class:`SkinColourModel`.

    Convention: chroma in [0, 1] with neutral grey at 0.5 (full-range BT.601).
    """
    b = ycbcr.shape[0]
    x = ycbcr.flatten(2).to(torch.float32)  # (B, 3, M)
    chroma = x[:, 1:]
    w = (reference.flatten(1) > 0).to(x.dtype)  # (B, M)
    n = w.sum(-1)
    ok = n >= min_pixels
    med = _masked_median(chroma, w)
    mad = _masked_median((chroma - med[..., None]).abs(), w) * 1.4826
    mad = mad.clamp_min(_MIN_CHROMA_STD)
    keep = w * (((chroma - med[..., None]).abs() / mad[..., None]) < _TRIM).all(1).to(x.dtype)
    mean, cov, _ = _weighted_gaussian(chroma, keep)
    for _ in range(iterations):
        cov = _regularise(cov / _TRIM_VAR)
        keep2 = w * (_mahalanobis(chroma, mean, cov) < _TRIM).to(x.dtype)
        # keep the previous estimate where trimming would leave too few pixels
        enough = keep2.sum(-1) >= min(min_pixels, 8)
        keep = torch.where(enough[:, None], keep2, keep)
        mean, cov, _ = _weighted_gaussian(chroma, keep)
    cov = _regularise(cov / _TRIM_VAR)
    luma = _masked_median(x[:, :1], keep)[:, 0]
    sat = _masked_median((chroma - 0.5).norm(dim=1, keepdim=True), keep)[:, 0]

    prior_mean = torch.tensor(_PRIOR_CHROMA_MEAN, device=x.device, dtype=x.dtype).expand(b, 2)
    prior_cov = torch.diag(torch.tensor(_PRIOR_CHROMA_STD, device=x.device, dtype=x.dtype) ** 2).expand(b, 2, 2)
    if not bool(ok.all()):
        logger.debug("skin model: %d of %d faces have < %d reference pixels; using the prior", int((~ok).sum()), b,
                     min_pixels)
    return SkinColourModel(
        chroma_mean=torch.where(ok[:, None], mean, prior_mean),
        chroma_cov=torch.where(ok[:, None, None], cov, prior_cov),
        luma=torch.where(ok, luma.clamp_min(0.05), torch.full_like(luma, _PRIOR_LUMA)),
        saturation=torch.where(ok, sat.clamp_min(0.02), torch.full_like(sat, _PRIOR_SATURATION)),
        n_pixels=torch.where(ok, n, torch.zeros_like(n)),
    )


def skin_probability(
    ycbcr: torch.Tensor,
    model: SkinColourModel,
    chroma_sigma: float = 3.0,
    softness: float = 0.5,
    dark_ratio: float = 0.45,
    low_chroma_ratio: float = 0.35,
) -> torch.Tensor:
    """Score pixels against a fitted skin colour model.

    ``p = sigmoid((chroma_sigma - d) / softness) * sigmoid((Y / Y_skin - dark_ratio) / 0.06)
    * sigmoid((S - t) / (0.1 S_skin))`` with ``d`` the chroma Mahalanobis distance, ``Y`` the luma,
    ``S = |(Cb, Cr) - 0.5|`` the chroma magnitude, ``Y_skin`` / ``S_skin`` the model's medians and the low-chroma
    threshold ``t = min(low_chroma_ratio * S_skin, S_skin - 0.03)`` (inactive for grey-scale photos).

    Args:
        ycbcr: (B, 3, H, W) from :func:`rgb_to_ycbcr`.
        model: from :func:`fit_skin_model`.
        chroma_sigma: Mahalanobis distance at which the chroma term is 0.5.
        softness: width of the chroma transition in Mahalanobis units.
        dark_ratio: luma (relative to the skin's median) at which the darkness term is 0.5.
        low_chroma_ratio: saturation (relative to the skin's) at which the low-chroma term is 0.5.

    Returns:
        (B, 1, H, W) skin probability in [0, 1] (no region masking).

    Convention: full-range BT.601 YCbCr in [0, 1].
    """
    b, _, h, w = ycbcr.shape
    x = ycbcr.flatten(2).to(torch.float32)
    d = _mahalanobis(x[:, 1:], model.chroma_mean, model.chroma_cov)
    p = torch.sigmoid((chroma_sigma - d) / softness)
    p = p * torch.sigmoid((x[:, 0] / model.luma[:, None] - dark_ratio) / 0.06)
    # Low chroma: below ``low_chroma_ratio`` of the skin's saturation and clearly (> 0.03) below it in absolute terms,
    # so that grey-scale photos (skin saturation ~0) are not rejected wholesale.
    sat = (x[:, 1:] - 0.5).norm(dim=1)
    s_skin = model.saturation[:, None]
    threshold = torch.minimum(low_chroma_ratio * s_skin, s_skin - _LOW_CHROMA_MARGIN)
    p = p * torch.sigmoid((sat - threshold) / (0.1 * s_skin))
    return p.reshape(b, 1, h, w).to(ycbcr.dtype)


def skin_mask(
    image: torch.Tensor,
    face_mask: torch.Tensor,
    landmarks: torch.Tensor,
    exclude: Sequence[str] = ("eyes", "brows", "mouth"),
    dilation: float = 0.08,
    chroma_sigma: float = 3.0,
    softness: float = 0.5,
    dark_ratio: float = 0.45,
    low_chroma_ratio: float = 0.35,
    min_pixels: int = 32,
) -> torch.Tensor:
    """Per-pixel skin probability inside the face region, adapted to each face's colours.

    1. Reference pixels: :func:`reference_mask` (cheeks + nose) inside ``face_mask`` and outside the exclusions.
    2. :func:`fit_skin_model`: robust (median / MAD start, trimmed) Gaussian of the reference chroma (Cb, Cr).
    3. :func:`skin_probability` for every pixel: chroma Mahalanobis distance -> probability, times soft rejections
       of pixels much darker (glasses, hair, beard, nostrils) or much less saturated than the fitted skin.
    4. Times ``face_mask``; 0 inside the dilated eye / brow / mouth polygons (:func:`exclusion_mask`).

    Faces with fewer than ``min_pixels`` reference pixels (tiny or heavily occluded faces) are scored with a broad
    generic skin prior; the result is always finite.

    Args:
        image: (B, 3, H, W) RGB in [0, 1].
        face_mask: (B, 1, H, W) face region (bool or float in [0, 1], e.g. the rendered face's coverage).
        landmarks: (B, 68, 2) iBUG landmarks in pixels of ``image``.
        exclude: regions cut out, any of :data:`EXCLUDABLE_REGIONS`.
        dilation: dilation of the excluded regions, in inter-ocular distances.
        chroma_sigma: see :func:`skin_probability`.
        softness: see :func:`skin_probability`.
        dark_ratio: see :func:`skin_probability`.
        low_chroma_ratio: see :func:`skin_probability`.
        min_pixels: see :func:`fit_skin_model`.

    Returns:
        (B, 1, H, W) float skin probability in [0, 1] (dtype of ``image``; 0 outside ``face_mask``). Not
        differentiable (a per-pixel weight, not a prediction).

    Convention: 0-based pixel centres; sRGB values as stored in the photo.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    b, _, h, w = image.shape
    if face_mask.shape != (b, 1, h, w):
        raise ValueError(f"face_mask must be {(b, 1, h, w)}, got {tuple(face_mask.shape)}")
    _check_landmarks(landmarks)
    if landmarks.shape[0] != b:
        raise ValueError(f"landmarks batch {landmarks.shape[0]} != image batch {b}")
    with torch.no_grad():
        lmk = landmarks.detach().to(device=image.device, dtype=torch.float32)
        lmk = torch.nan_to_num(lmk)
        ycbcr = rgb_to_ycbcr(image.detach().to(torch.float32).clamp(0.0, 1.0))
        region = face_mask.detach().to(torch.float32).clamp(0.0, 1.0)
        excluded = exclusion_mask(lmk, h, w, exclude, dilation) if exclude else torch.zeros_like(region).bool()
        reference = reference_mask(lmk, h, w) & (region > 0.5) & ~excluded
        model = fit_skin_model(ycbcr, reference, min_pixels=min_pixels)
        p = skin_probability(ycbcr, model, chroma_sigma, softness, dark_ratio, low_chroma_ratio)
        p = p * region * (~excluded).to(p.dtype)
    return p.to(image.dtype).clamp(0.0, 1.0)
