"""Learn the per-vertex albedo model of facerecon from landmark-annotated photos.

``python -m training.build_albedo [--out facerecon/assets/albedo] [--components 60] [--max-faces 2000]``

ICT-FaceKit has no albedo model and the public ones may not be redistributed, so facerecon learns its own:

1. **Faces**: the train split (:func:`training.data.make_splits`) of 300-W (68 points, 256 x 256 crops), then frontal
   AFLW crops (|yaw| <= 30 deg, >= 17 of 21 points visible, 128 x 128 crops), up to ``--max-faces`` (the default
   takes all of them: ~1,900 candidates, ~1,500 kept, about 6-7 minutes on a busy 2-core CPU). The held-out
   faces for the evaluation come from the val split. The AFLW2000-3D benchmark is never read.
2. **Fit**: identity (40 modes), expression (53 blendshapes in [0, 1], sigmoid-parametrised, with an L2 prior),
   rotation, 2D translation and scale of the ICT morphable model to the landmarks by batched Adam, with the maths of
   :meth:`facerecon.FaceRecon.decode` (weak perspective, principal point at the crop centre). 300-W jaw points on
   turned faces keep the down-weighting of their records. Faces with a large landmark residual are dropped.
3. **Colours**: each fitted mesh is rasterised; visible vertices (z-buffer, view-frame ``n_z > 0.3``) sample the crop,
   weighted by :func:`facerecon.skin.skin_mask` (eyes, brows, mouth, hair, glasses and beard get ~0) and by
   foreshortening. On 300-W faces the lips (outer minus inner lip polygon) are sampled too, without the skin-colour
   test: they are part of the albedo. Clipped (over-exposed) samples are dropped, and so are grey-scale photos,
   mostly over-exposed faces and faces with too little visible skin.
4. **Lighting vs albedo**: per face, 9-band SH lighting is solved by robust (IRLS) least squares against the current
   population-mean albedo pattern, with the constant band fixed to 1 (exposure and white balance stay in the albedo,
   matching FaceRecon's ambient lighting prior) and priors on the directional bands (ridge; colour coupling across
   channels). The albedo is then colour / shading, and the population mean is re-estimated (3 rounds).
5. **Completion**: per face, vertices never seen are filled from their mirror vertex, then from the population mean
   scaled to the face's colour; then Jacobi iterations of a smoothness (mesh Laplacian) + left-right symmetry +
   weak mean prior energy blend the seams.
6. **PCA** over the completed train albedos: mean + K orthonormal modes with per-mode std (coefficients ~N(0, 1)).
   Held-out val faces are reconstructed from their observed (visible, skin-weighted) vertices with K modes.

Albedo is kept in the photo's sRGB-encoded [0, 1] values: the model renders ``albedo * sh_shading`` and compares it
with photo pixels, so this is the consistent choice (no gamma conversion anywhere).

Outputs in ``--out``: ``albedo_model.safetensors``, ``mean_texture.png``, ``build_report.json`` and ``README.md``;
and ``docs/albedo_components.png`` (mean and +/-2 sigma of the first three modes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as nnf

from facerecon.geometry import (
    axis_angle_to_matrix,
    euler_to_matrix,
    image_to_crop,
    model_to_camera,
    sh_basis,
)
from facerecon.inference.crop import crop_face
from facerecon.morphable.albedo import ALBEDO_FILE, reconstruction_rmse, save_albedo_model, topology_hash
from facerecon.morphable.ict import MorphableModelData, load_morphable_data
from facerecon.morphable.model import MorphableModel
from facerecon.render import rasterize, render, sample_image, to_screen, vertex_visibility
from facerecon.skin import polygon_mask, rgb_to_ycbcr, skin_mask
from training.data import FaceSample, extend_landmarks, load_300w, load_aflw, make_splits, read_rgb

logger = logging.getLogger("facerecon.build_albedo")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "facerecon" / "assets" / "albedo"
DEFAULT_DOCS = REPO / "docs" / "albedo_components.png"

N_IDENTITY = 40
CROP_300W = 256
CROP_AFLW = 128
AFLW_MIN_VISIBLE = 17
#: Landmark residual (RMS over weighted points, pixels of a 256 crop where the face's landmark box is 160 px) above
#: which a fit is rejected.
MAX_FIT_RMS = 5.0
#: Minimum view-frame normal z of a sampled vertex (and the ramp width above it for the foreshortening weight).
MIN_NZ, NZ_RAMP = 0.3, 0.3
EVAL_KS = (5, 10, 20, 40)
#: A colour channel at or above this value is clipped (over-exposed): such samples are dropped.
CLIPPED = 0.98
#: Face-level filters: minimum number of well-observed (weight > 0.5) vertices, minimum mean chroma magnitude of the
#: skin samples (YCbCr, rejects grey-scale photos), maximum fraction of clipped skin samples.
MIN_OBSERVED = 400
MIN_CHROMA = 0.03
MAX_CLIPPED = 0.3


# ----------------------------------------------------------------------------------------------------------------------
# Faces


@dataclass
class Batch:
    """Crops and landmark targets of faces of one source (one crop size)."""

    records: list[FaceSample]
    images: torch.Tensor  # (B, 3, S, S) float in [0, 1]
    landmarks: torch.Tensor  # (B, 71, 2) crop pixels
    weights: torch.Tensor  # (B, 71)
    yaw: torch.Tensor  # (B,) radians, prior guess
    size: int


def select_faces(splits: dict[str, list[FaceSample]], split: str, limit: int) -> list[FaceSample]:
    """300-W faces of ``split`` first, then frontal AFLW crops with enough visible points, up to ``limit``."""
    w300 = [r for r in splits[split] if r.source == "300w"]
    aflw = [r for r in splits[split] if r.source == "aflw" and r.pose_bin == "0-30"
            and int((r.weights > 0).sum()) >= AFLW_MIN_VISIBLE]
    return (w300 + aflw)[:limit]


def load_batch(records: Sequence[FaceSample]) -> Batch:
    """Canonical crops (``crop_face(image, box, S)``) and crop-pixel landmarks of records of one source."""
    size = CROP_300W if records[0].source == "300w" else CROP_AFLW
    imgs, lmks = [], []
    for r in records:
        imgs.append(crop_face(read_rgb(r.image_path), r.box, size))
        lmks.append(image_to_crop(torch.from_numpy(r.landmarks)[None].double(),
                                  torch.from_numpy(r.box)[None], size)[0].float())
    yaw = [r.yaw if math.isfinite(r.yaw) else (r.yaw_estimate if math.isfinite(r.yaw_estimate) else 0.0)
           for r in records]
    images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    return Batch(list(records), images, torch.stack(lmks), torch.from_numpy(np.stack([r.weights for r in records])),
                 torch.tensor(np.radians(yaw), dtype=torch.float32), size)


# ----------------------------------------------------------------------------------------------------------------------
# Landmark fit


@dataclass
class Fit:
    """Fitted parameters (B faces) in the decode convention of :class:`facerecon.FaceRecon`."""

    identity: torch.Tensor  # (B, K)
    expression: torch.Tensor  # (B, 53)
    rotation: torch.Tensor  # (B, 3, 3)
    translation: torch.Tensor  # (B, 3) mm, z = 0
    scale: torch.Tensor  # (B,) crop pixels per mm
    rms: torch.Tensor  # (B,) weighted landmark RMS in 256-crop pixels


def _project(morph: MorphableModel, identity: torch.Tensor, expression: torch.Tensor, rotation: torch.Tensor,
             translation: torch.Tensor, scale: torch.Tensor, centre: float) -> torch.Tensor:
    """(B, 71, 2) extended-layout landmarks in crop pixels (``FaceRecon.decode`` maths)."""
    lmk = extend_landmarks(morph.shape(identity, expression, landmarks_only=True))
    cam = model_to_camera(lmk, rotation, translation)
    return scale[:, None, None] * cam[..., :2] + centre


def fit_landmarks(morph: MorphableModel, batch: Batch, iters: int = 300, expression_prior: float = 2.0,
                  sigma_px: float = 2.0) -> Fit:
    """Fit shape and pose to the landmark targets of a batch by Adam (pose first, then everything).

    Energy per face: ``sum_i w_i |p_i - q_i|^2 / (2 sigma^2) + |alpha|^2 / 2 + expression_prior |e|^2 / 2`` with
    residuals in pixels of a 256 crop (the 1.6 crop rule makes that scale-free).
    """
    b, size = batch.images.shape[0], batch.size
    norm = 256.0 / size
    centre = (size - 1) / 2.0
    w, q = batch.weights, batch.landmarks
    r0 = euler_to_matrix(torch.stack([batch.yaw, torch.zeros_like(batch.yaw), torch.zeros_like(batch.yaw)], -1))
    # Initial scale and translation from the visible points' spread and centroid.
    ident = torch.zeros(b, morph.n_identity)
    expr_logit = torch.full((b, morph.n_expression), -4.0)
    p0 = _project(morph, ident, torch.sigmoid(expr_logit), r0, torch.zeros(b, 3), torch.ones(b), 0.0)
    wsum = w.sum(1, keepdim=True).clamp_min(1e-6)
    cq = (w[..., None] * q).sum(1) / wsum
    cp = (w[..., None] * p0).sum(1) / wsum
    spread_q = ((w * ((q - cq[:, None]) ** 2).sum(-1)).sum(1) / wsum[:, 0]).sqrt()
    spread_p = ((w * ((p0 - cp[:, None]) ** 2).sum(-1)).sum(1) / wsum[:, 0]).sqrt()
    log_s = torch.log(spread_q / spread_p.clamp_min(1e-6))
    t = (cq - centre) / log_s.exp()[:, None] - cp

    omega = torch.zeros(b, 3)
    params = {"omega": omega, "t": t, "log_s": log_s, "ident": ident, "expr": expr_logit}
    for p in params.values():
        p.requires_grad_(True)
    lrs = {"omega": 0.02, "t": 1.0, "log_s": 0.01, "ident": 0.05, "expr": 0.1}

    def energy(full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rot = axis_angle_to_matrix(params["omega"]) @ r0
        trans = torch.cat([params["t"], torch.zeros(b, 1)], 1)
        expr = torch.sigmoid(params["expr"])
        p = _project(morph, params["ident"], expr, rot, trans, params["log_s"].exp(), centre)
        sq = ((p - q) * norm).pow(2).sum(-1)
        data = (w * sq).sum(1) / (2 * sigma_px**2)
        rms = ((w * sq).sum(1) / wsum[:, 0]).sqrt()
        prior = 0.5 * params["ident"].pow(2).sum(1) + 0.5 * expression_prior * expr.pow(2).sum(1)
        return (data + (prior if full else 0.0)).sum(), rms

    for stage, (names, n) in enumerate(((("omega", "t", "log_s"), iters // 3), (tuple(params), iters))):
        opt = torch.optim.Adam([{"params": [params[k]], "lr": lrs[k]} for k in names])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n, eta_min=0.05 * min(lrs.values()))
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss, _ = energy(stage == 1)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        _, rms = energy(True)
        return Fit(identity=params["ident"].detach(), expression=torch.sigmoid(params["expr"]).detach(),
                   rotation=axis_angle_to_matrix(params["omega"]).detach() @ r0,
                   translation=torch.cat([params["t"].detach(), torch.zeros(b, 1)], 1),
                   scale=params["log_s"].detach().exp(), rms=rms)


# ----------------------------------------------------------------------------------------------------------------------
# Colour sampling


@dataclass
class Samples:
    """Per-vertex observations of F faces."""

    colors: torch.Tensor  # (F, N, 3) photo colours in [0, 1]
    weights: torch.Tensor  # (F, N) visibility x skin x foreshortening
    normals: torch.Tensor  # (F, N, 3) view-frame normals
    clipped: torch.Tensor  # (F,) fraction of the skin samples with a clipped channel (dropped from weights)


def sample_colors(morph: MorphableModel, batch: Batch, fit: Fit) -> Samples:
    """Rasterise the fitted meshes and sample the crops at their visible, skin-weighted vertices."""
    size = batch.size
    centre = torch.full((len(fit.scale), 2), (size - 1) / 2.0)
    shape = morph.shape(fit.identity, fit.expression)
    screen = to_screen(model_to_camera(shape, fit.rotation, fit.translation), fit.scale, centre)
    normals = morph.vertex_normals(shape) @ fit.rotation.transpose(1, 2)
    frags = rasterize(screen, morph.faces, size, size)
    visible = vertex_visibility(screen, morph.faces, frags, normals)
    # erode the rendered face region by ~1.5 % of the crop so that silhouette pixels (background) are not sampled
    k = 2 * max(1, round(0.015 * size)) + 1
    region = 1.0 - nnf.max_pool2d(1.0 - frags.mask[:, None].float(), k, stride=1, padding=k // 2)
    if batch.records[0].source == "300w":
        lmk68 = batch.landmarks[:, :68]
    else:  # AFLW has 21 points: use the fitted model's 68
        lmk68 = _project(morph, fit.identity, fit.expression, fit.rotation, fit.translation, fit.scale,
                         (size - 1) / 2.0)[:, :68]
    skin = skin_mask(batch.images, region, lmk68)
    # erode by ~1 % of the crop: drops the blurred rims of thin rejected structures (glasses frames, hair strands)
    k = 2 * max(1, round(0.01 * size)) + 1
    skin = -nnf.max_pool2d(-skin, k, stride=1, padding=k // 2)
    if batch.records[0].source == "300w":
        # Lips are part of the face's albedo: inside the lip band (outer lip minus the slightly dilated inner lip
        # polygon) keep the darkness / low-chroma rejection but not the skin-colour test. AFLW's 21 points are too
        # coarse for this.
        lips = skin_mask(batch.images, region, lmk68, exclude=("eyes", "brows", "mouth_interior"), dilation=0.02,
                         chroma_sigma=1e3)
        band = polygon_mask(lmk68[:, 48:60], size, size) & ~polygon_mask(lmk68[:, 60:68], size, size, 1.0)
        skin = torch.maximum(skin, lips * band)
    xy = screen[..., :2]
    colors = sample_image(batch.images, xy, padding_mode="border")
    skin_v = sample_image(skin, xy)[..., 0]
    fore = ((normals[..., 2] - MIN_NZ) / NZ_RAMP).clamp(0.0, 1.0)
    weights = visible.float() * skin_v * fore
    is_clipped = colors.amax(-1) >= CLIPPED
    clipped = (weights * is_clipped).sum(1) / weights.sum(1).clamp_min(1e-6)
    return Samples(colors=colors, weights=weights * ~is_clipped, normals=normals, clipped=clipped)


def face_quality(samples: Samples) -> dict[str, torch.Tensor]:
    """Face-level filters, each (F,) bool: enough observed skin, not grey-scale, not over-exposed."""
    w = samples.weights
    chroma = (rgb_to_ycbcr(samples.colors.transpose(1, 2)[..., None])[:, 1:, :, 0] - 0.5).norm(dim=1)  # (F, N)
    mean_chroma = (w * chroma).sum(1) / w.sum(1).clamp_min(1e-6)
    return {"observed": (w > 0.5).sum(1) >= MIN_OBSERVED, "colour": mean_chroma >= MIN_CHROMA,
            "exposure": samples.clipped <= MAX_CLIPPED}


# ----------------------------------------------------------------------------------------------------------------------
# Mesh graph helpers


def mesh_adjacency(faces: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse (N, N) vertex adjacency (1 per undirected edge, both directions) and degrees (N,)."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = torch.cat([e, e.flip(1)])
    e = torch.unique(e, dim=0)
    adj = torch.sparse_coo_tensor(e.T, torch.ones(len(e)), (n, n), check_invariants=False).coalesce()
    deg = torch.bincount(e[:, 0], minlength=n).float()
    return adj, deg


def smooth_fill(values: torch.Tensor, weights: torch.Tensor, adj: torch.Tensor, deg: torch.Tensor,
                mirror: torch.Tensor, prior: torch.Tensor, smooth: float, symmetry: float, prior_weight: float,
                iters: int) -> torch.Tensor:
    """Smooth and fill F per-vertex maps at once by Jacobi iterations.

    Minimises ``sum_v w_v |a_v - y_v|^2 + smooth * sum_edges |a_u - a_v|^2 + symmetry * sum_v |a_v - a_mirror(v)|^2
    + prior_weight * sum_v |a_v - prior_v|^2``.

    Args:
        values: (F, N, 3) observations y (also the starting point; fill unseen vertices beforehand).
        weights: (F, N) data weights w.
        adj: sparse (N, N) adjacency.
        deg: (N,) vertex degrees.
        mirror: (N,) mirror vertex index.
        prior: (F, N, 3) prior values.
        smooth: weight of the edge (Laplacian) term.
        symmetry: weight of the left-right term.
        prior_weight: weight of the prior term.
        iters: Jacobi iterations.

    Returns:
        (F, N, 3) smoothed maps.
    """
    f, n, _ = values.shape
    a = values
    data = weights[..., None] * values + prior_weight * prior
    denom = (weights + smooth * deg + symmetry + prior_weight)[..., None]
    for _ in range(iters):
        flat = a.permute(1, 0, 2).reshape(n, f * 3)
        neigh = (adj @ flat).reshape(n, f, 3).permute(1, 0, 2)
        a = (data + smooth * neigh + symmetry * a[:, mirror]) / denom
    return a


# ----------------------------------------------------------------------------------------------------------------------
# Lighting / albedo separation


def solve_lighting(colors: torch.Tensor, weights: torch.Tensor, normals: torch.Tensor, pattern: torch.Tensor,
                   ridge: float = 0.005, coupling: float = 0.1, irls: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-face SH lighting (constant band = 1) and robust weights, for colours ~ gain * pattern * shading.

    Args:
        colors: (F, N, 3) photo colours.
        weights: (F, N) observation weights.
        normals: (F, N, 3) view-frame normals.
        pattern: (N, 3) current albedo pattern (population mean).
        ridge: prior on the 8 directional bands (relative to the constant one).
        coupling: prior pulling the directional bands of the three channels together (grey light).
        irls: iterations of Cauchy re-weighting (specularities, unmasked non-skin).

    Returns:
        (F, 9, 3) lighting with ``L[:, 0] == 1``, and (F, N) specular weights in [0, 1]: the robust weights of the
        vertices brighter than predicted, 1 elsewhere.
    """
    f = colors.shape[0]
    basis = sh_basis(normals)  # (F, N, 9)
    wsum = weights.sum(1).clamp_min(1e-6)
    mu = (weights[..., None] * colors).sum(1) / (weights[..., None] * pattern).sum(1).clamp_min(1e-6)  # (F, 3)
    y = colors / mu[:, None].clamp_min(1e-6)
    d = torch.ones(9)
    d[0] = 0.0
    eye3 = torch.eye(3)
    reg = (ridge * torch.kron(eye3, torch.diag(d)) + coupling * torch.kron(eye3 - 1.0 / 3.0, torch.diag(d)))
    robust = torch.ones_like(weights)
    lit = None
    for it in range(irls + 1):
        w = weights * robust
        gram = torch.zeros(f, 27, 27)
        rhs = torch.zeros(f, 27)
        for c in range(3):
            a = basis * pattern[None, :, c, None]  # (F, N, 9)
            gram[:, 9 * c:9 * c + 9, 9 * c:9 * c + 9] = torch.einsum("fni,fn,fnj->fij", a, w, a)
            rhs[:, 9 * c:9 * c + 9] = torch.einsum("fni,fn,fn->fi", a, w, y[..., c])
        sol = torch.linalg.solve(gram + reg * w.sum(1).clamp_min(1e-6)[:, None, None], rhs)  # (F, 27)
        lit = sol.reshape(f, 3, 9).transpose(1, 2)  # (F, 9, 3)
        if it == irls:
            break
        diff = y - pattern * (basis @ lit)
        res = diff.norm(dim=-1)
        scale = 1.25 * (weights * res).sum(1) / wsum  # mean |r| -> sigma of a Gaussian core
        robust = 1.0 / (1.0 + (res / (2.0 * scale[:, None].clamp_min(1e-3))) ** 2)
    dc = lit[:, :1].clamp_min(1e-3)
    # Only outliers brighter than predicted (specular highlights) lose albedo confidence; darker or redder ones
    # (lips, freckles, beard shadow) are albedo and must reach the population statistics.
    specular = torch.where(diff.sum(-1) > 0, robust, torch.ones_like(robust))
    return lit / dc, specular


def raw_albedo(colors: torch.Tensor, weights: torch.Tensor, normals: torch.Tensor,
               lighting: torch.Tensor, specular: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Albedo = colour / shading (clamped to [0, 1]) and its confidence (low where shading is weak or specular)."""
    shading = sh_basis(normals) @ lighting  # (F, N, 3)
    albedo = (colors / shading.clamp_min(0.2)).clamp(0.0, 1.0)
    conf = weights * specular * ((shading.amin(-1) - 0.2) / 0.3).clamp(0.0, 1.0)
    return albedo, conf


def population_mean(albedo: torch.Tensor, conf: torch.Tensor, adj: torch.Tensor, deg: torch.Tensor,
                    mirror: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Confidence-weighted, symmetrised mean albedo (N, 3); vertices seen too rarely are filled smoothly."""
    num = torch.zeros(albedo.shape[1], 3)
    den = torch.zeros(albedo.shape[1])
    for i in range(0, albedo.shape[0], chunk):
        num += (conf[i:i + chunk, :, None] * albedo[i:i + chunk]).sum(0)
        den += conf[i:i + chunk].sum(0)
    num, den = num + num[mirror], den + den[mirror]
    mean = num / den.clamp_min(1e-6)[:, None]
    seen = den / den.max()
    global_mean = (num.sum(0) / den.sum()).expand_as(mean)
    start = torch.where((seen > 1e-3)[:, None], mean, global_mean)
    w = (seen / 0.02).clamp(0.0, 1.0)
    out = smooth_fill(start[None], w[None], adj, deg, mirror, global_mean[None], smooth=1.0, symmetry=0.0,
                      prior_weight=1e-4, iters=300)[0]
    return out


def complete_albedos(albedo: torch.Tensor, conf: torch.Tensor, mean: torch.Tensor, adj: torch.Tensor,
                     deg: torch.Tensor, mirror: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Fill and regularise per-face albedo maps (F, N, 3): mirror, then scaled mean, then smoothing + symmetry."""
    out = []
    for i in range(0, albedo.shape[0], chunk):
        a, w = albedo[i:i + chunk], conf[i:i + chunk]
        seen = w > 0.05
        m_seen = seen[:, mirror]
        gain = ((w[..., None] * a).sum(1) / (w[..., None] * mean).sum(1).clamp_min(1e-6)).clamp(0.2, 5.0)
        prior = mean * gain[:, None]
        start = torch.where(seen[..., None], a, torch.where(m_seen[..., None], a[:, mirror], prior))
        out.append(smooth_fill(start, w, adj, deg, mirror, prior, smooth=0.1, symmetry=0.1, prior_weight=0.01,
                               iters=60).clamp(0.0, 1.0))
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------------------
# PCA, texture, figure


def pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of (F, D) samples: mean (D,), orthonormal modes (k, D), std (k,), cumulative explained ratio (k,)."""
    mean = x.mean(0)
    xc = (x - mean).double()
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    var = s**2 / max(x.shape[0] - 1, 1)
    modes = vh[:k]
    sign = torch.sign(modes.sum(1))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    modes = modes * sign[:, None]
    return mean, modes.float(), var[:k].sqrt().float(), (torch.cumsum(var, 0) / var.sum())[:k].float()


def uv_texture(data: MorphableModelData, albedo: torch.Tensor, size: int = 512) -> np.ndarray:
    """Rasterise per-vertex albedo (N, 3) in UV space: (size, size, 3) uint8 RGB, v up, seams dilated."""
    n_uv = data.uvs.shape[0]
    uv_to_vertex = torch.zeros(n_uv, dtype=torch.long)
    uv_to_vertex[data.face_uvs.reshape(-1)] = data.faces.reshape(-1)
    screen = torch.stack([data.uvs[:, 0] * size - 0.5, (1.0 - data.uvs[:, 1]) * size - 0.5,
                          torch.zeros(n_uv)], -1)[None]
    out = render(screen, data.face_uvs, albedo[uv_to_vertex][None], size, size)
    img = (out.image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    mask = (out.mask[0, 0].numpy() * 255).astype(np.uint8)
    return cv2.inpaint(img, 255 - mask, 3, cv2.INPAINT_TELEA) if mask.min() == 0 else img


def component_figure(morph: MorphableModel, mean: torch.Tensor, modes: torch.Tensor, std: torch.Tensor,
                     size: int = 256) -> np.ndarray:
    """3 x 3 grid (RGB uint8): rows = modes 1-3, columns = -2 sigma, mean, +2 sigma; frontal mean shape, ambient."""
    lmk = morph.mean[morph.landmark_index]
    extent = (lmk[:, :2].amax(0) - lmk[:, :2].amin(0)).amax()
    scale = torch.tensor([size / (1.6 * extent)])
    screen = to_screen(model_to_camera(morph.mean[None], torch.eye(3)[None], torch.zeros(1, 3)), scale,
                       torch.full((1, 2), (size - 1) / 2.0))
    n = mean.shape[0] // 3
    rows = []
    for k in range(3):
        tiles = []
        for sig in (-2.0, 0.0, 2.0):
            alb = (mean + sig * std[k] * modes[k]).reshape(n, 3).clamp(0, 1)
            img = render(screen, morph.faces, alb[None], size, size, background=torch.ones(1, 3, size, size))
            tile = (img.image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8).copy()
            label = "mean" if sig == 0 else f"PC{k + 1} {'+' if sig > 0 else '-'}2 sigma"
            cv2.putText(tile, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, 1))
    return np.concatenate(rows, 0)


# ----------------------------------------------------------------------------------------------------------------------
# Driver


def process(morph: MorphableModel, records: Sequence[FaceSample], batch_size: int, iters: int,
            timings: dict[str, float], dropped: dict[str, int]) -> tuple[Samples, list[FaceSample], np.ndarray]:
    """Fit and sample every record (per source, in batches); keep good fits of well-exposed colour photos.

    Returns:
        The kept faces' samples, their records, and the fit RMS of every record (pixels of a 256 crop).
    """
    cols, wts, nrms, clips, kept, rms_all = [], [], [], [], [], []
    for source in ("300w", "aflw"):
        recs = [r for r in records if r.source == source]
        for i in range(0, len(recs), batch_size):
            t0 = time.perf_counter()
            batch = load_batch(recs[i:i + batch_size])
            t1 = time.perf_counter()
            fit = fit_landmarks(morph, batch, iters=iters)
            t2 = time.perf_counter()
            good = fit.rms <= MAX_FIT_RMS
            dropped["fit"] = dropped.get("fit", 0) + int((~good).sum())
            rms_all.append(fit.rms.numpy())
            n_kept = 0
            if good.any():
                idx = torch.nonzero(good)[:, 0]
                sub = Batch([batch.records[j] for j in idx.tolist()], batch.images[idx], batch.landmarks[idx],
                            batch.weights[idx], batch.yaw[idx], batch.size)
                fit_sub = Fit(*(getattr(fit, f)[idx] for f in ("identity", "expression", "rotation", "translation",
                                                                 "scale", "rms")))
                with torch.no_grad():
                    s = sample_colors(morph, sub, fit_sub)
                checks = face_quality(s)
                ok = torch.ones_like(good[idx])
                for name, passed in checks.items():
                    dropped[name] = dropped.get(name, 0) + int((ok & ~passed).sum())
                    ok = ok & passed
                cols.append(s.colors[ok])
                wts.append(s.weights[ok])
                nrms.append(s.normals[ok].half())
                clips.append(s.clipped[ok])
                kept += [r for r, k in zip(sub.records, ok.tolist(), strict=True) if k]
                n_kept = int(ok.sum())
            t3 = time.perf_counter()
            for key, dt in (("load", t1 - t0), ("fit", t2 - t1), ("sample", t3 - t2)):
                timings[key] = timings.get(key, 0.0) + dt
            logger.info("%s %d-%d: %d/%d faces kept (median fit rms %.2f px); load %.1fs fit %.1fs sample %.1fs",
                        source, i, i + len(batch.records), n_kept, len(batch.records), float(fit.rms.median()),
                        t1 - t0, t2 - t1, t3 - t2)
    if not kept:
        raise RuntimeError("no face passed the fit and quality filters")
    samples = Samples(torch.cat(cols), torch.cat(wts), torch.cat(nrms).float(), torch.cat(clips))
    return samples, kept, np.concatenate(rms_all)


def separate(samples: Samples, pattern: torch.Tensor,
             chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lighting per face against ``pattern``; returns raw albedo (F, N, 3), confidence (F, N), lighting (F, 9, 3)."""
    albs, confs, lits = [], [], []
    for i in range(0, samples.colors.shape[0], chunk):
        c, w, n = samples.colors[i:i + chunk], samples.weights[i:i + chunk], samples.normals[i:i + chunk]
        lit, robust = solve_lighting(c, w, n, pattern)
        a, conf = raw_albedo(c, w, n, lit, robust)
        albs.append(a)
        confs.append(conf)
        lits.append(lit)
    return torch.cat(albs), torch.cat(confs), torch.cat(lits)


def build(args: argparse.Namespace) -> dict:
    """Run the whole build; returns the report."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    data = load_morphable_data(surface="face")
    morph = MorphableModel(data, n_identity=N_IDENTITY)
    n = morph.n_vertices
    adj, deg = mesh_adjacency(morph.faces, n)
    mirror = morph.vertex_mirror

    t0 = time.perf_counter()
    records = load_300w(args.data_root) + load_aflw(args.data_root)
    splits = make_splits(seed=args.split_seed, records=records)
    train = select_faces(splits, "train", args.max_faces)
    val = select_faces(splits, "val", args.val_faces)
    timings["records"] = time.perf_counter() - t0
    logger.info("faces: %d train, %d val candidates (%.1fs)", len(train), len(val), timings["records"])

    dropped: dict[str, int] = {}
    train_s, train_kept, train_rms = process(morph, train, args.batch_size, args.fit_iters, timings, dropped)
    val_s, val_kept, _ = process(morph, val, args.batch_size, args.fit_iters, timings, {})
    logger.info("train faces dropped: %s", dropped)

    t0 = time.perf_counter()
    pattern = torch.full((n, 3), 0.5)
    for rnd in range(args.rounds):
        alb, conf, _ = separate(train_s, pattern)
        pattern = population_mean(alb, conf, adj, deg, mirror)
        logger.info("round %d: population mean albedo %s", rnd, pattern.mean(0).numpy().round(3))
    completed = complete_albedos(alb, conf, pattern, adj, deg, mirror)
    val_alb, val_conf, _ = separate(val_s, pattern)
    timings["separate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    k = min(args.components, completed.shape[0] - 1)
    mean, modes, std, explained = pca(completed.reshape(completed.shape[0], -1), k)
    basis = modes.reshape(k, n, 3)
    mean_n = mean.reshape(n, 3).clamp(0.0, 1.0)
    ks = tuple(sorted({0, *(x for x in EVAL_KS if x <= k), k}))
    rmse = reconstruction_rmse(mean_n, basis, std, val_alb, val_conf, ks=ks)
    train_rmse = reconstruction_rmse(mean_n, basis, std, alb[:300], conf[:300], ks=ks)
    timings["pca_eval"] = time.perf_counter() - t0

    counts = {s: sum(r.source == s for r in train_kept) for s in ("300w", "aflw")}
    meta = {
        "format": "facerecon-albedo-v1",
        "surface": data.surface,
        "n_vertices": str(n),
        "n_components": str(k),
        "topology_hash": topology_hash(morph.faces, n),
        "ict_source_hash": data.source_hash,
        "colour_space": "sRGB-encoded photo values in [0, 1] (no linearisation); colors = albedo * sh_shading",
        "data": (f"300-W train split ({counts['300w']} faces) + AFLW crops train split, |yaw| <= 30 deg "
                 f"({counts['aflw']} faces); split seed {args.split_seed}"),
        "licence": ("facerecon artefact learned from research-only, non-commercial datasets (300-W, AFLW); contains "
                    "no images. Mesh topology: ICT-FaceKit, MIT licence, (c) 2020 USC ICT."),
        "date": datetime.date.today().isoformat(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_albedo_model(out / ALBEDO_FILE, mean_n, basis, std, explained, meta)

    t0 = time.perf_counter()
    tex = uv_texture(data, mean_n, args.texture_size)
    cv2.imwrite(str(out / "mean_texture.png"), cv2.cvtColor(tex, cv2.COLOR_RGB2BGR))
    if args.docs:
        Path(args.docs).parent.mkdir(parents=True, exist_ok=True)
        fig = component_figure(morph, mean_n.reshape(-1), modes, std)
        cv2.imwrite(str(args.docs), cv2.cvtColor(fig, cv2.COLOR_RGB2BGR))
    timings["outputs"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    ev = {str(kk): float(explained[kk - 1]) for kk in ks if kk > 0}
    report = {
        "faces": {"train_candidates": len(train), "train_kept": len(train_kept), "train_by_source": counts,
                  "val_candidates": len(val), "val_kept": len(val_kept),
                  "train_dropped": dropped, "train_fit_rms_median_px": float(np.median(train_rms))},
        "components": k,
        "explained_variance": ev,
        "heldout_rmse": {str(kk): v for kk, v in rmse.items()},
        "heldout_relative_reduction": {str(kk): 1.0 - v / rmse[0] for kk, v in rmse.items() if kk > 0},
        "train_rmse_first300": {str(kk): v for kk, v in train_rmse.items()},
        "mean_albedo_rgb": mean_n.mean(0).tolist(),
        "timings_s": {kk: round(v, 1) for kk, v in timings.items()},
        "args": {kk: str(v) for kk, v in vars(args).items()},
        "metadata": meta,
    }
    (out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(readme(report))
    return report


def readme(report: dict) -> str:
    """The README of the built model folder, with the measured numbers."""
    meta = report["metadata"]
    ev = report["explained_variance"]
    rm = report["heldout_rmse"]
    f, d = report["faces"], report["faces"]["train_dropped"]
    rows = "\n".join(
        f"| {k} | {ev.get(k, float('nan')):.3f} | {rm[k]:.4f} | {report['heldout_relative_reduction'][k]:.1%} |"
        for k in rm if k != "0")
    return f"""# Learned albedo model (facerecon)

`albedo_model.safetensors`: a linear per-vertex albedo model on the ICT-FaceKit `{meta['surface']}` surface
({meta['n_vertices']} vertices, topology hash `{meta['topology_hash']}`): `mean` (N, 3), orthonormal `basis`
(K, N, 3) with K = {meta['n_components']}, `std` (K,) so that coefficients are ~N(0, 1), and the cumulative
`explained_variance` (K,). Load it with `facerecon.morphable.albedo.load_albedo_model("default")`.
`mean_texture.png` is the mean albedo rasterised in ICT UV space (512 x 512, v up). `build_report.json` holds
the build's numbers and settings.

Colour space: sRGB-encoded values in [0, 1], the same space as the photo (`colors = albedo * sh_shading` is compared
with photo pixels; no gamma conversion). The SH lighting's constant band was fixed to 1 during the build, so exposure
and white balance of the training photos are part of the albedo statistics.

## Data and method
- Faces: {meta['data']}. The AFLW2000-3D benchmark was not used.
- Kept {f['train_kept']} of {f['train_candidates']} candidates; dropped: landmark-fit residual > {MAX_FIT_RMS} px on
  the 256-px crop ({d.get('fit', 0)}), too little visible skin ({d.get('observed', 0)}), grey-scale photo
  ({d.get('colour', 0)}), over-exposed ({d.get('exposure', 0)}).
- ICT identity (40 modes), expression, rotation, translation and scale fitted to the landmarks; per-vertex colours
  sampled at visible vertices (z-buffer, `n_z > 0.3`) weighted by the adaptive skin mask (`facerecon.skin`);
  9-band SH lighting separated by robust least squares against the population-mean albedo (3 rounds); unseen
  vertices filled from the mirror side and the scaled mean; Laplacian smoothing + left-right symmetry; PCA.
- Eyes, brows, the mouth interior, hair, glasses and beards are excluded by the skin mask: those regions (and the
  scalp, mostly hair in photos) are filled from the surrounding skin. Lips were sampled on the 300-W faces (lip band
  from the landmarks, no skin-colour test), so the model has lip colour.
- Rebuild ({report['timings_s']['total']:.0f} s on a busy 2-core CPU):
  `python -m training.build_albedo --max-faces {report['args']['max_faces']} --components {meta['n_components']}`

## Held-out evaluation
{report['faces']['val_kept']} val-split faces (never used for the PCA); weighted RMSE (albedo units, [0, 1]) over
their visible skin vertices, coefficients fitted by MAP; K = 0 is the mean alone (RMSE {rm['0']:.4f}).

| K | explained variance | RMSE | reduction vs mean |
|---|---|---|---|
{rows}

## Licence
This model is facerecon's own artefact, but it was learned from photos of research-only, non-commercial datasets
(300-W / AFW / HELEN and AFLW). The files hold only per-vertex colour statistics (a mean and principal components,
and the mean rendered as a texture): no photos and no per-face data. Check whether the dataset terms fit your use
before using it commercially.
The mesh topology (vertex order, triangles, UVs) is ICT-FaceKit's: MIT licence, Copyright (c) 2020 USC Institute for
Creative Technologies, https://github.com/ICT-VGL/ICT-FaceKit.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: facerecon/assets/albedo)")
    p.add_argument("--components", type=int, default=60, help="number of PCA components K")
    p.add_argument("--max-faces", type=int, default=2000, help="maximum number of train faces (300-W first)")
    p.add_argument("--val-faces", type=int, default=300, help="maximum number of held-out val faces")
    p.add_argument("--batch-size", type=int, default=48, help="faces fitted and rendered at once")
    p.add_argument("--fit-iters", type=int, default=300, help="Adam iterations of the landmark fit")
    p.add_argument("--rounds", type=int, default=3, help="lighting / mean-albedo alternation rounds")
    p.add_argument("--texture-size", type=int, default=512, help="side of mean_texture.png")
    p.add_argument("--split-seed", type=int, default=0, help="seed of training.data.make_splits")
    p.add_argument("--data-root", default=None, help="shared data folder (default: FACERECON_DATA or ../shared)")
    p.add_argument("--docs", default=str(DEFAULT_DOCS), help="component figure path ('' to skip)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m training.build_albedo``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    report = build(args)
    ev, rm = report["explained_variance"], report["heldout_rmse"]
    print(f"albedo model: K={report['components']}, {report['faces']['train_kept']} train faces, "
          f"{report['faces']['val_kept']} held-out faces, {report['timings_s']['total']:.0f} s")
    print("explained variance: " + ", ".join(f"K={k}: {v:.3f}" for k, v in ev.items()))
    print("held-out RMSE: " + ", ".join(f"K={k}: {v:.4f}" for k, v in rm.items()))
    print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in report["timings_s"].items()))


if __name__ == "__main__":
    main()
