"""Evaluate a FaceRecon model on AFLW2000-3D-format data with the 3DDFA / 3DDFA_V2 / SynergyNet protocol.

    python -m training.evaluate --model DIR_OR_REPO --data DIR [--json OUT] [--limit N]

Protocol (as in 3DDFA, 3DDFA_V2 and SynergyNet):

- 68-point 2D NME: mean point error divided by sqrt(w * h) of the ground-truth landmarks' bounding box; the face crop
  comes from the ground-truth landmarks (facerecon's canonical crop: the square of side 1.6 x the larger side of
  their bounding box, centred on it), no detector; ground truth is ``pt3d_68`` rows 0-1 (MATLAB 1-based, converted
  to 0-based pixel centres).
- Bins by |yaw| of ``Pose_Para`` in degrees ([0, 30], (30, 60], (60, 90], with > 90 counted in (60, 90], which gives
  the published 1312 / 383 / 305 split on all 2000 images); the balanced NME is the mean of the three bins.
- Head-pose MAE in degrees: yaw, pitch, roll in the AFLW2000-3D convention (R = Rx(pitch) Ry(yaw) Rz(roll) of
  ``Code/RotationMatrix.m``: yaw > 0 faces image left, pitch > 0 looks up, roll > 0 is clockwise), against the
  Euler angles recomputed from ``Pose_Para`` (``index.csv``), on images whose raw angles are all within +/-99 degrees
  (the usual FSA-Net / HopeNet filter). Also reported: the geodesic rotation error (the angle of ``R_pred^T R_gt``),
  overall and per yaw bin, because near profile (|yaw| -> 90) the Euler split of pitch and roll is ill-conditioned
  (at |yaw| = 90 only pitch -/+ roll is defined), so a small rotation error can show up as tens of degrees in both.
- Detection rate of the face detector on the full photos (a detection counts when its box contains the centre of
  the ground-truth landmarks).
- Pipeline NME (not part of the 3DDFA protocol): the same NME for what users get, ``Reconstructor`` on the full photo
  (detect, crop, refine the crop from the predicted landmarks, regress), on the faces whose detection box contains
  the ground-truth centre; per yaw bin, balanced, and the share of faces found.
- SSIM between the re-rendered face and the photo inside the rendered face mask, in the model's input crop.
- Vertex error (mm) on a fixed, seeded set of synthetic faces with exact 3D ground truth.
- Median milliseconds per image for the model forward (batch 1) and for the whole pipeline (load, detect, crop,
  regress, refine, reconstruct) on the full photo.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerecon.morphable.ict import MIRROR_68

logger = logging.getLogger("facerecon.evaluate")

YAW_BINS = ("[0, 30]", "(30, 60]", "(60, 90]")
POSE_FILTER_DEG = 99.0


@dataclass
class Aflw2000Item:
    """One AFLW2000-3D image: path, 68 ground-truth points (0-based pixel centres), pose in degrees."""

    name: str
    image_path: Path
    landmarks: np.ndarray
    yaw: float
    pitch: float
    roll: float
    yaw_raw: float
    raw_angles: tuple[float, float, float]

    @property
    def yaw_bin(self) -> int:
        """Index into :data:`YAW_BINS` (> 90 degrees counts in the last bin)."""
        a = abs(self.yaw_raw)
        return 0 if a <= 30 else (1 if a <= 60 else 2)

    @property
    def pose_valid(self) -> bool:
        """True when every raw ``Pose_Para`` angle is within +/- :data:`POSE_FILTER_DEG` (the pose-MAE filter)."""
        return all(abs(a) <= POSE_FILTER_DEG for a in self.raw_angles)


def load_aflw2000(folder: str | Path, limit: int | None = None) -> list[Aflw2000Item]:
    """Read an AFLW2000-3D-format folder (``*.jpg`` + ``*.mat`` with ``pt3d_68`` and ``Pose_Para``).

    Angles come from ``index.csv`` when present (recomputed Euler angles), else from ``Pose_Para``.
    """
    from scipy.io import loadmat

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"AFLW2000-3D folder '{folder}' not found")
    index: dict[str, dict[str, str]] = {}
    if (folder / "index.csv").is_file():
        with open(folder / "index.csv") as f:
            index = {row["name"]: row for row in csv.DictReader(f)}
    items = []
    for jpg in sorted(folder.glob("*.jpg")):
        mat_path = jpg.with_suffix(".mat")
        if not mat_path.is_file():
            continue
        mat = loadmat(str(mat_path))
        pts = mat["pt3d_68"][:2].T.astype(np.float64) - 1.0
        pitch_r, yaw_r, roll_r = np.degrees(mat["Pose_Para"][0, :3])
        row = index.get(jpg.stem)
        if row:
            yaw, pitch, roll = float(row["yaw_deg"]), float(row["pitch_deg"]), float(row["roll_deg"])
        else:
            yaw, pitch, roll = float(yaw_r), float(pitch_r), float(roll_r)
        items.append(Aflw2000Item(jpg.stem, jpg, pts, yaw, pitch, roll, float(yaw_r),
                                  (float(yaw_r), float(pitch_r), float(roll_r))))
        if limit and len(items) >= limit:
            break
    if not items:
        raise FileNotFoundError(f"no AFLW2000-3D .jpg/.mat pairs in '{folder}'")
    return items


def nme_68(pred: np.ndarray, gt: np.ndarray, points: tuple[int, ...] | None = None) -> float:
    """NME of (68, 2) points normalised by sqrt(w * h) of the ground truth's bounding box (all 68 points).

    ``points`` restricts the averaged errors to those indices (the box still spans every point).
    """
    w, h = gt.max(0) - gt.min(0)
    idx = list(points) if points is not None else slice(None)
    return float(np.linalg.norm(pred[idx] - gt[idx], axis=1).mean() / math.sqrt(max(w * h, 1e-6)))


#: iBUG-68 regions for the per-region NME breakdown.
REGIONS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)), "brows": tuple(range(17, 27)), "nose": tuple(range(27, 36)),
    "eyes": tuple(range(36, 48)), "mouth": tuple(range(48, 68)),
}


#: Points on the subject's right half (iBUG 68; the mirror partners are the left half, the rest the midline). For a
#: face with yaw > 0 (turned towards the image left) this half faces away from the camera.
SUBJECT_RIGHT: tuple[int, ...] = (*range(0, 8), *range(17, 22), *range(36, 42), 31, 32, 48, 49, 50, 58, 59, 60, 61, 67)


def similarity_aligned(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``pred`` (N, 2) after the least-squares similarity (scale, rotation, translation) that best maps it onto ``gt``.

    Diagnosis: the NME left after this alignment is the shape error; the rest is global placement (crop / pose).
    """
    mp, mg = pred.mean(0), gt.mean(0)
    a, b = pred - mp, gt - mg
    u, sv, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1.0, d]) @ vt
    scale = (sv * np.array([1.0, d])).sum() / max(float((a**2).sum()), 1e-12)
    return scale * a @ r + mg


def scale_shift_aligned(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``pred`` (N, 2) after the least-squares scale and translation (no rotation) that best map it onto ``gt``.

    Diagnosis: with the ground-truth rotation substituted (:func:`evaluate_aflw2000`'s ``nme_gt_rotation``) this
    removes the 2D placement the predicted translation made for the predicted rotation, so the NME left measures the
    shape alone; applied to the prediction itself it gives the matching baseline (``nme_scale_shift``).
    """
    mp, mg = pred.mean(0), gt.mean(0)
    a = pred - mp
    scale = float((a * (gt - mg)).sum()) / max(float((a**2).sum()), 1e-12)
    return scale * a + mg


def signed_offsets(pred: np.ndarray, gt: np.ndarray, yaw_deg: float) -> np.ndarray:
    """(68, 2) offsets ``pred - gt`` / sqrt(w * h) in a yaw-positive frame (faces with yaw < 0 mirrored).

    Mirroring flips x and swaps each point with its mirror partner, so averaging over faces shows systematic
    (convention) differences per point, e.g. the far-side jaw of turned faces.
    """
    w, h = gt.max(0) - gt.min(0)
    d = (pred - gt) / math.sqrt(max(w * h, 1e-6))
    if yaw_deg < 0:
        d = d[list(MIRROR_68)] * np.array([-1.0, 1.0])
    return d


def box_contains_centre(boxes: list[Any], landmarks: np.ndarray) -> bool:
    """True when a detected box contains the centre of the landmarks' bounding box (a detection hit).

    ``boxes`` are :class:`~facerecon.inference.detect.FaceBox` objects or ``[x0, y0, x1, y1]`` arrays.
    """
    cx, cy = 0.5 * (landmarks.min(0) + landmarks.max(0))
    arrays = (np.asarray(b.as_array() if hasattr(b, "as_array") else b) for b in boxes)
    return any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in arrays)


def signed_angle_difference(a: Any, b: Any) -> Any:
    """``a - b`` for angles in degrees (floats or same-shape arrays), wrapped to [-180, 180)."""
    return (a - b + 180.0) % 360.0 - 180.0


def angle_error(a: float, b: float) -> float:
    """Absolute difference of two angles in degrees, wrapped to [0, 180]."""
    return abs(signed_angle_difference(float(a), float(b)))


def rotation_error_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between the rotations of two sets of AFLW2000-3D Euler angles.

    Args:
        pred: (B, 3) ``(yaw, pitch, roll)`` in degrees.
        target: (B, 3) ``(yaw, pitch, roll)`` in degrees.

    Returns:
        (B,) the angle of ``R(pred)^T R(target)`` in degrees, in [0, 180].

    Convention: :func:`facerecon.geometry.euler_to_matrix` (degrees here, radians there).
    """
    from facerecon.geometry import euler_to_matrix

    if pred.shape != target.shape or pred.shape[-1:] != (3,):
        raise ValueError(f"expected two (B, 3) Euler angle tensors, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return rotation_angle_deg(euler_to_matrix(torch.deg2rad(pred.double())),
                              euler_to_matrix(torch.deg2rad(target.double())))


def rotation_angle_deg(ra: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between two sets of rotation matrices.

    Args:
        ra: (B, 3, 3) rotations.
        rb: (B, 3, 3) rotations.

    Returns:
        (B,) the angle of ``ra^T rb`` in degrees, in [0, 180].
    """
    from facerecon.geometry import matrix_to_axis_angle

    if ra.shape != rb.shape or ra.shape[-2:] != (3, 3):
        raise ValueError(f"expected two (B, 3, 3) rotation tensors, got {tuple(ra.shape)} and {tuple(rb.shape)}")
    return torch.rad2deg(torch.linalg.vector_norm(matrix_to_axis_angle(ra.transpose(-1, -2) @ rb), dim=-1))


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM map of two (B, C, H, W) images in [0, 1] (Gaussian window, per channel), (B, 1, H, W)."""
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, kernel, padding=window // 2, groups=x.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(1, keepdim=True)


def _crops_from_landmarks(images: list[np.ndarray], landmarks: np.ndarray, size: int, scale: float,
                          views: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Protocol crops cut from the boxes of (B, 68, 2) landmarks, and those (B, 4) boxes.

    The crops are (B, 3, S, S) in [0, 1], or (B, V, 3, S, S) with (V, 3) ``views``
    (:func:`facerecon.geometry.view_boxes` of each box, as :meth:`FaceRecon.forward` takes them).
    """
    from facerecon.geometry import box_from_points, view_boxes
    from facerecon.inference.crop import crop_face

    boxes = box_from_points(torch.from_numpy(np.asarray(landmarks, dtype=np.float64)), scale).numpy()
    if views is None:
        crops = np.stack([crop_face(img, box, size) for img, box in zip(images, boxes, strict=True)])
        return torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0, boxes
    vb = view_boxes(torch.from_numpy(boxes), views.double()).numpy()
    crops = np.stack([[crop_face(img, b, size) for b in bs] for img, bs in zip(images, vb, strict=True)])
    return torch.from_numpy(crops).permute(0, 1, 4, 2, 3).float() / 255.0, boxes


def _crop_batch(items: list[Aflw2000Item], size: int, scale: float,
                views: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
    from facerecon.inference.image_io import load_image

    return _crops_from_landmarks([load_image(it.image_path) for it in items],
                                 np.stack([it.landmarks for it in items]), size, scale, views)


def test_views(shift_test: bool) -> torch.Tensor | None:
    """The (V, 3) views of the shift test (:data:`facerecon.models.facerecon.SHIFT_TEST_VIEWS`), or None."""
    from facerecon.models.facerecon import SHIFT_TEST_VIEWS

    return torch.tensor(SHIFT_TEST_VIEWS) if shift_test else None


def masked_ssim(out: Any, model: Any, images: torch.Tensor) -> list[float]:
    """SSIM between the re-rendered faces of ``out`` and the (B, 3, S, S) crops, averaged inside the face mask."""
    from training.losses import render_prediction

    r = render_prediction(out, model, images.shape[-1])
    m = r.mask
    return ((ssim_map(r.image, images) * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1)).tolist()


def evaluate_aflw2000(model: Any, items: list[Aflw2000Item], batch_size: int = 32,
                      with_ssim: bool = True, flip_test: bool = False, shift_test: bool = False,
                      orientation_test: bool = False) -> dict[str, Any]:
    """Landmark NME per yaw bin, pose MAE and (optionally) masked SSIM of the re-rendered face.

    ``flip_test`` averages each crop's prediction with its mirrored crop's (:meth:`FaceRecon.forward`);
    ``shift_test`` also averages the crops of :data:`~facerecon.models.facerecon.SHIFT_TEST_VIEWS` (shifted protocol
    boxes; the SSIM is that of the protocol crop).

    Diagnosis rows (nothing here feeds back into a model): ``nme_aligned`` after a per-face similarity alignment;
    ``nme_scale_shift`` after a per-face scale + translation fit (:func:`scale_shift_aligned`), and
    ``nme_gt_rotation`` the same with the predicted rotation replaced by the ground-truth ``Pose_Para`` rotation
    (shape and expression kept): the gap between the two is what the head-pose error costs in NME.
    """
    import dataclasses

    from facerecon.geometry import crop_to_image, euler_to_matrix

    size, scale = model.config.input_size, model.config.crop_scale
    views = test_views(shift_test)
    per_image: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        x, boxes = _crop_batch(chunk, size, scale, views)
        with torch.inference_mode():
            out = model(x, flip_test=flip_test, views=views, orientation_test=orientation_test)
            box_t = torch.from_numpy(boxes).float()
            lmk = crop_to_image(out.landmarks_2d, box_t, size).numpy()
            euler = np.degrees(out.euler.numpy())
            crops = x if views is None else x[:, 0]
            ssim = masked_ssim(out, model, crops) if with_ssim else [float("nan")] * len(chunk)
            gt = torch.tensor([[it.yaw, it.pitch, it.roll] for it in chunk], dtype=torch.float64)
            gt_rot = euler_to_matrix(torch.deg2rad(gt)).to(out.params.rotation.dtype)
            oracle = model.decode(dataclasses.replace(out.params, rotation=gt_rot), landmarks_only=True)
            lmk_gt_rot = crop_to_image(oracle.landmarks_2d, box_t, size).numpy()
        geodesic = rotation_error_deg(torch.from_numpy(euler).double(), gt).tolist()
        for k, it in enumerate(chunk):
            yaw, pitch, roll = euler[k]
            off = signed_offsets(lmk[k], it.landmarks, it.yaw)
            per_image.append({
                "name": it.name, "bin": it.yaw_bin, "nme": nme_68(lmk[k], it.landmarks),
                "nme_aligned": nme_68(similarity_aligned(lmk[k], it.landmarks), it.landmarks),
                "nme_scale_shift": nme_68(scale_shift_aligned(lmk[k], it.landmarks), it.landmarks),
                "nme_gt_rotation": nme_68(scale_shift_aligned(lmk_gt_rot[k], it.landmarks), it.landmarks),
                "regions": {r: nme_68(lmk[k], it.landmarks, idx) for r, idx in REGIONS.items()},
                "offsets": off,
                "nme_far_side": float(np.linalg.norm(off[list(SUBJECT_RIGHT)], axis=1).mean()),
                "nme_near_side": float(np.linalg.norm(off[[MIRROR_68[i] for i in SUBJECT_RIGHT]], axis=1).mean()),
                "yaw_err": angle_error(yaw, it.yaw), "pitch_err": angle_error(pitch, it.pitch),
                "roll_err": angle_error(roll, it.roll), "rotation_err": geodesic[k],
                "pose_valid": it.pose_valid, "ssim": ssim[k],
            })
    bins = {}
    for b, label in enumerate(YAW_BINS):
        faces = [p for p in per_image if p["bin"] == b]
        bins[label] = {"nme": float(np.mean([p["nme"] for p in faces])) if faces else float("nan"), "n": len(faces)}
        if faces:
            for key in ("nme_aligned", "nme_scale_shift", "nme_gt_rotation", "nme_far_side", "nme_near_side"):
                bins[label][key] = float(np.mean([p[key] for p in faces]))
            bins[label]["regions"] = {r: float(np.mean([p["regions"][r] for p in faces])) for r in REGIONS}
            bins[label]["mean_offsets"] = np.round(np.mean([p["offsets"] for p in faces], 0), 5).tolist()
    for p in per_image:
        del p["offsets"]
    valid = [p for p in per_image if p["pose_valid"]]
    pose = _pose_summary(valid)
    pose_bins = {label: _pose_summary([p for p in valid if p["bin"] == b]) for b, label in enumerate(YAW_BINS)}
    finite_bins = [v["nme"] for v in bins.values() if v["n"]]
    ssims = [p["ssim"] for p in per_image if math.isfinite(p["ssim"])]
    return {
        "nme_bins": bins,
        "nme_balanced": float(np.mean(finite_bins)) if finite_bins else float("nan"),
        "nme_all": float(np.mean([p["nme"] for p in per_image])),
        "pose_mae_deg": pose,
        "pose_bins": pose_bins,
        "ssim": float(np.mean(ssims)) if ssims else float("nan"),
        "n_images": len(per_image),
        "per_image": per_image,
    }


def _pose_summary(faces: list[dict[str, Any]]) -> dict[str, float]:
    """Mean yaw / pitch / roll errors, their mean, and the mean geodesic rotation error of ``faces``."""
    if not faces:
        return {"yaw": float("nan"), "pitch": float("nan"), "roll": float("nan"), "mean": float("nan"),
                "geodesic": float("nan"), "n": 0}
    pose = {k: float(np.mean([p[f"{k}_err"] for p in faces])) for k in ("yaw", "pitch", "roll")}
    pose["mean"] = float(np.mean(list(pose.values())))
    pose["geodesic"] = float(np.mean([p["rotation_err"] for p in faces]))
    pose["n"] = len(faces)
    return pose


def detection_rate(items: list[Aflw2000Item], detector: Any = None) -> dict[str, Any]:
    """Share of images where a detected box contains the centre of the ground-truth landmarks, per yaw bin."""
    from facerecon.inference.detect import FaceDetector
    from facerecon.inference.image_io import load_image

    detector = detector or FaceDetector()
    hits = {b: [] for b in range(len(YAW_BINS))}
    for it in items:
        hits[it.yaw_bin].append(box_contains_centre(detector(load_image(it.image_path)), it.landmarks))
    out = {YAW_BINS[b]: float(np.mean(v)) if v else float("nan") for b, v in hits.items()}
    out["all"] = float(np.mean([h for v in hits.values() for h in v]))
    return out


def pipeline_nme(model: Any, items: list[Aflw2000Item], flip_test: bool = False, shift_test: bool = False,
                 refine_steps: int | None = None, orientation_test: bool = False) -> dict[str, Any]:
    """68-point NME of the whole pipeline (:class:`Reconstructor` with detection on the full photos), per yaw bin.

    A face counts when one of the detections' boxes contains the centre of its ground-truth landmarks' box (as in
    :func:`detection_rate`; the first such face, largest first, is scored); faces not found are left out of the NME
    and counted in ``found``.

    Args:
        model: the model.
        items: the photos and their ground truth.
        flip_test: run the pipeline with the flip test.
        shift_test: run the pipeline with the shift test.
        refine_steps: crop refinements (None: the :class:`Reconstructor` default).
        orientation_test: run the pipeline with the orientation test.

    Returns:
        ``refine_steps``, ``nme_bins`` (per yaw bin: ``nme``, ``n`` faces found, ``found`` share), ``nme_balanced``,
        ``found`` (share of all faces) and ``per_image`` rows (``name``, ``bin``, ``nme`` or None when not found).
    """
    from facerecon.errors import NoFaceError
    from facerecon.inference.pipeline import Reconstructor

    kwargs = {} if refine_steps is None else {"refine_steps": refine_steps}
    rec = Reconstructor(model, flip_test=flip_test, shift_test=shift_test, orientation_test=orientation_test, **kwargs)
    rows = []
    for it in items:
        try:
            faces = rec(it.image_path)
        except NoFaceError:
            faces = []
        hit = [f for f in faces if box_contains_centre([f.detection], it.landmarks)]
        e = nme_68(hit[0].landmarks, it.landmarks) if hit else None
        rows.append({"name": it.name, "bin": it.yaw_bin, "nme": e})
    bins = {}
    for b, label in enumerate(YAW_BINS):
        in_bin = [r["nme"] for r in rows if r["bin"] == b]
        found = [e for e in in_bin if e is not None]
        bins[label] = {"nme": float(np.mean(found)) if found else float("nan"), "n": len(found),
                       "found": len(found) / len(in_bin) if in_bin else float("nan")}
    n_found = sum(b["n"] for b in bins.values())
    return {"refine_steps": rec.refine_steps, "nme_bins": bins,
            "nme_balanced": float(np.mean([b["nme"] for b in bins.values()])),
            "found": n_found / max(1, len(items)), "per_image": rows}


def protocol_nme_on_found(protocol_rows: list[dict[str, Any]],
                          pipeline_rows: list[dict[str, Any]]) -> dict[str, float]:
    """Protocol NME per yaw bin over the faces the pipeline found, to compare the two on the same faces.

    Args:
        protocol_rows: ``per_image`` rows of :func:`evaluate_aflw2000`.
        pipeline_rows: ``per_image`` rows of :func:`pipeline_nme` (``nme`` None where the face was not found).

    Returns:
        ``{yaw bin label: mean protocol NME}`` (NaN for a bin without found faces).
    """
    found = {r["name"] for r in pipeline_rows if r["nme"] is not None}
    out = {}
    for b, label in enumerate(YAW_BINS):
        errors = [r["nme"] for r in protocol_rows if r["bin"] == b and r["name"] in found]
        out[label] = float(np.mean(errors)) if errors else float("nan")
    return out


def timing(model: Any, items: list[Aflw2000Item], repeats: int = 30, flip_test: bool = False,
           shift_test: bool = False, orientation_test: bool = False) -> dict[str, float]:
    """Median ms of the model forward and of the whole pipeline.

    The forward runs at batch 1 on the first photo's protocol crop (all the views with ``shift_test``).
    """
    views = test_views(shift_test)
    x, _ = _crop_batch(items[:1], model.config.input_size, model.config.crop_scale, views)
    with torch.inference_mode():
        for _ in range(3):
            model(x, flip_test=flip_test, views=views, orientation_test=orientation_test)
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, flip_test=flip_test, views=views, orientation_test=orientation_test)
            t.append((time.perf_counter() - t0) * 1e3)
    pipe = []
    for it in items[: max(3, min(repeats, len(items)))]:
        t0 = time.perf_counter()
        try:
            model.reconstruct(it.image_path, max_faces=1, flip_test=flip_test, shift_test=shift_test,
                              orientation_test=orientation_test)
        except Exception:  # no face: still a pipeline run
            pass
        pipe.append((time.perf_counter() - t0) * 1e3)
    return {"model_forward_ms": statistics.median(t), "pipeline_ms": statistics.median(pipe[1:] or pipe)}


def synthetic_vertex_error(model: Any, n: int = 64, seed: int = 1234, flip_test: bool = False,
                           turned_yaw: float = 45.0, orientation_test: bool = False) -> dict[str, float]:
    """Shape and head-pose errors on seeded synthetic faces (exact 3D ground truth).

    The vertex error (mm) is measured in the model frame (pose removed): the same identity and expression define both
    shapes. The rotation error is the geodesic angle between the predicted and the rendered head rotation, over all
    faces and over those with |yaw| > ``turned_yaw`` degrees (exact pose labels where real ones are scarce).
    """
    from training.synthetic import SyntheticFaces

    gen = SyntheticFaces(model, seed=seed)
    errs, rot_errs, yaws = [], [], []
    for start in range(0, n, 16):
        batch = gen.batch(min(16, n - start), index=start)
        with torch.inference_mode():
            out = model(batch["image"], flip_test=flip_test, orientation_test=orientation_test)
        errs.append((out.shape - batch["shape"]).norm(dim=-1).mean(-1))
        rot_errs.append(rotation_angle_deg(out.params.rotation.double(), batch["rotation"].double()))
        yaws.append(batch["yaw"])
    e, r, yaw = torch.cat(errs), torch.cat(rot_errs), torch.cat(yaws)
    turned = yaw.abs() > turned_yaw
    return {"vertex_error_mm": float(e.mean()), "n": int(e.numel()), "rotation_error_deg": float(r.mean()),
            "rotation_error_deg_turned": float(r[turned].mean()) if turned.any() else float("nan"),
            "n_turned": int(turned.sum()), "turned_yaw_deg": float(turned_yaw)}


#: iBUG points compared in the fairness slice: brows, nose, eyes, mouth (MediaPipe's jaw follows the outline).
INNER_POINTS = tuple(range(17, 68))


def default_pseudo_labels() -> Path:
    """Where ``training/pseudo_label.py`` is told to write the UTKFace pseudo-labels (in the facerecon cache)."""
    from training.data import default_pseudo_label_path

    return default_pseudo_label_path("utkface")


def evaluate_fairness(model: Any, utk_dir: str | Path, pseudo_labels: str | Path, batch_size: int = 64,
                      limit: int | None = None, with_detection: bool = True, flip_test: bool = False,
                      shift_test: bool = False, orientation_test: bool = False) -> dict[str, Any]:
    """Landmark NME, SSIM and detection rate per UTKFace race group (and gender) against MediaPipe pseudo-labels.

    UTKFace is never used for training. Each face is cropped as in the AFLW2000-3D protocol, from the box of its 68
    pseudo-label points; the NME averages the 51 inner points (:data:`INNER_POINTS`) and is normalised by sqrt(w * h)
    of the 68 points' box. Faces MediaPipe did not find are left out (their share is reported per group).
    """
    from facerecon.geometry import crop_to_image
    from facerecon.inference.detect import FaceDetector
    from facerecon.inference.image_io import load_image
    from training.data import UTK_RACES

    utk_dir = Path(utk_dir)
    labels = np.load(pseudo_labels)
    by_name = {str(n): (pts, bool(f)) for n, pts, f in zip(labels["names"], labels["landmarks"], labels["found"],
                                                           strict=True)}
    with open(utk_dir / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if limit:
        rows = rows[:limit]
    size, scale = model.config.input_size, model.config.crop_scale
    detector = FaceDetector() if with_detection else None
    per_face, missing = [], {r: 0 for r in UTK_RACES}
    labelled = [(r, by_name[r["name"]][0]) for r in rows if r["name"] in by_name and by_name[r["name"]][1]]
    for r in rows:
        if r["name"] not in by_name or not by_name[r["name"]][1]:
            missing[UTK_RACES[int(r["race"])]] += 1
    for start in range(0, len(labelled), batch_size):
        chunk = labelled[start:start + batch_size]
        imgs = [load_image(utk_dir / "images" / r["name"]) for r, _ in chunk]
        gts = np.stack([pts.astype(np.float64) for _, pts in chunk])
        views = test_views(shift_test)
        x, boxes = _crops_from_landmarks(imgs, gts, size, scale, views)
        with torch.inference_mode():
            out = model(x, flip_test=flip_test, views=views, orientation_test=orientation_test)
            box_t = torch.from_numpy(boxes).float()
            lmk = crop_to_image(out.landmarks_2d, box_t, size).numpy()
            ssim = masked_ssim(out, model, x if views is None else x[:, 0])
        for k, (row, _) in enumerate(chunk):
            hit = float(box_contains_centre(detector(imgs[k]), gts[k])) if detector is not None else float("nan")
            per_face.append({"name": row["name"], "race": UTK_RACES[int(row["race"])],
                             "gender": ("male", "female")[int(row["gender"])],
                             "nme": nme_68(lmk[k], gts[k], INNER_POINTS), "ssim": ssim[k], "detected": hit})

    def summary(faces: list[dict[str, Any]]) -> dict[str, float]:
        nmes = np.array([p["nme"] for p in faces])
        det = [p["detected"] for p in faces if math.isfinite(p["detected"])]
        return {"n": len(faces), "nme": float(nmes.mean()) if len(nmes) else float("nan"),
                "nme_median": float(np.median(nmes)) if len(nmes) else float("nan"),
                "nme_sem": float(nmes.std(ddof=1) / math.sqrt(len(nmes))) if len(nmes) > 1 else float("nan"),
                "ssim": float(np.mean([p["ssim"] for p in faces])) if faces else float("nan"),
                "detection_rate": float(np.mean(det)) if det else float("nan")}

    races = {r: {**summary([p for p in per_face if p["race"] == r]), "not_labelled": missing[r]} for r in UTK_RACES}
    genders = {g: summary([p for p in per_face if p["gender"] == g]) for g in ("male", "female")}
    group_nme = [v["nme"] for v in races.values() if v["n"]]
    return {"labels": "MediaPipe Face Landmarker pseudo-labels (51 inner points)", "all": summary(per_face),
            "race": races, "gender": genders, "race_nme_gap": float(max(group_nme) - min(group_nme)),
            "race_nme_ratio": float(max(group_nme) / min(group_nme)), "per_face": per_face}


def fairness_table(fair: dict[str, Any]) -> str:
    """Per-group results of :func:`evaluate_fairness` as a markdown table."""
    lines = ["| group | n | NME inner 51 (%) | +/- s.e. | median | SSIM | detection |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    groups = [("all", fair["all"])] + [(f"race: {k}", v) for k, v in fair["race"].items()] + \
             [(f"gender: {k}", v) for k, v in fair["gender"].items()]
    for name, v in groups:
        if not v["n"]:  # a group without faces (e.g. with --limit) has no numbers
            continue
        det = f"{100 * v['detection_rate']:.1f}%" if math.isfinite(v["detection_rate"]) else "-"
        lines.append(f"| {name} | {v['n']} | {100 * v['nme']:.2f} | {100 * v['nme_sem']:.2f} | "
                     f"{100 * v['nme_median']:.2f} | {v['ssim']:.3f} | {det} |")
    return "\n".join(lines)


def markdown_table(results: dict[str, Any]) -> str:
    """The summary as a markdown table."""
    b = results["aflw2000"]["nme_bins"]
    pose = results["aflw2000"]["pose_mae_deg"]
    rows = [
        ("NME [0, 30] (%)", f"{100 * b['[0, 30]']['nme']:.2f} (n={b['[0, 30]']['n']})"),
        ("NME (30, 60] (%)", f"{100 * b['(30, 60]']['nme']:.2f} (n={b['(30, 60]']['n']})"),
        ("NME (60, 90] (%)", f"{100 * b['(60, 90]']['nme']:.2f} (n={b['(60, 90]']['n']})"),
        ("NME balanced (%)", f"{100 * results['aflw2000']['nme_balanced']:.2f}"),
        ("Pose MAE yaw / pitch / roll (deg)", f"{pose['yaw']:.2f} / {pose['pitch']:.2f} / {pose['roll']:.2f}"),
        ("Pose MAE mean (deg)", f"{pose['mean']:.2f} (n={pose['n']})"),
        ("Rotation error, geodesic (deg)", f"{pose['geodesic']:.2f}"),
    ]
    for label, nb in b.items():
        if "regions" in nb:
            rows.append((f"NME jaw / brows / nose / eyes / mouth, yaw {label} (%)",
                         " / ".join(f"{100 * nb['regions'][r]:.2f}" for r in REGIONS)))
    if any("nme_far_side" in nb for nb in b.values()):
        rows.append(("NME far / near half of the face, per bin (%)",
                     " / ".join(f"{100 * nb['nme_far_side']:.2f}, {100 * nb['nme_near_side']:.2f}"
                                if "nme_far_side" in nb else "n/a" for nb in b.values())))
    if any("nme_aligned" in nb for nb in b.values()):
        rows.append(("NME after per-face similarity alignment, per bin (%, diagnosis)",
                     " / ".join(f"{100 * nb['nme_aligned']:.2f}" if "nme_aligned" in nb else "n/a"
                                for nb in b.values())))
    if any("nme_gt_rotation" in nb for nb in b.values()):
        rows.append(("NME after a per-face scale + shift fit: own / ground-truth rotation, per bin (%, diagnosis)",
                     " / ".join(f"{100 * nb['nme_scale_shift']:.2f}, {100 * nb['nme_gt_rotation']:.2f}"
                                if "nme_gt_rotation" in nb else "n/a" for nb in b.values())))
    for label, pb in results["aflw2000"].get("pose_bins", {}).items():
        rows.append((f"Pose MAE y / p / r, geodesic, yaw {label} (deg)",
                     f"{pb['yaw']:.2f} / {pb['pitch']:.2f} / {pb['roll']:.2f}, {pb['geodesic']:.2f} (n={pb['n']})"))
    rows.append(("SSIM (face mask)", f"{results['aflw2000']['ssim']:.3f}"))
    if "detection" in results:
        rows.append(("Detection rate", f"{100 * results['detection']['all']:.1f}%"))
    if "pipeline" in results:
        pb = results["pipeline"]
        rows.append((f"Pipeline NME with detection, per bin / balanced (%, refine steps {pb['refine_steps']})",
                     " / ".join(f"{100 * v['nme']:.2f}" for v in pb["nme_bins"].values())
                     + f", {100 * pb['nme_balanced']:.2f} ({100 * pb['found']:.1f}% of the faces found)"))
        if "protocol_nme_bins" in pb:
            rows.append(("Protocol NME on the faces the pipeline found, per bin (%)",
                         " / ".join(f"{100 * v:.2f}" for v in pb["protocol_nme_bins"].values())))
    if "synthetic" in results:
        syn = results["synthetic"]
        rows.append(("Vertex error, synthetic (mm)", f"{syn['vertex_error_mm']:.2f}"))
        if "rotation_error_deg" in syn:
            rows.append((f"Rotation error, synthetic: all / |yaw| > {syn['turned_yaw_deg']:.0f} (deg)",
                         f"{syn['rotation_error_deg']:.2f} / {syn['rotation_error_deg_turned']:.2f} "
                         f"(n={syn['n']} / {syn['n_turned']})"))
    if "timing" in results:
        rows.append(("Model forward (ms, batch 1)", f"{results['timing']['model_forward_ms']:.1f}"))
        rows.append(("Pipeline (ms per photo)", f"{results['timing']['pipeline_ms']:.1f}"))
    if results.get("flip_test"):
        rows.append(("Flip test (mirrored crop averaged)", "yes"))
    if results.get("shift_test"):
        from facerecon.models.facerecon import SHIFT_TEST_VIEWS

        shifted = len(SHIFT_TEST_VIEWS) - 1
        rows.append((f"Shift test ({shifted} shifted crops averaged; not the synthetic faces)", "yes"))
    if results.get("orientation_test"):
        rows.append(("Orientation test (faces on their side regressed upright)", "yes"))
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or Hub repo id (default: the bundled model)")
    parser.add_argument("--data", required=True, help="AFLW2000-3D-format folder")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=("detection", "pipeline", "ssim", "synthetic", "timing", "fairness"),
                        help="parts to skip")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="crop refinements in the pipeline NME (default: the Reconstructor default)")
    parser.add_argument("--synthetic", type=int, default=64, help="number of synthetic faces")
    parser.add_argument("--fairness-data", type=Path, default=None,
                        help="UTKFace folder for the per-group slice (default: ../shared/utkface when present)")
    parser.add_argument("--pseudo-labels", type=Path, default=None,
                        help="pseudo-landmarks of training/pseudo_label.py (default: in the facerecon cache)")
    parser.add_argument("--per-face", action="store_true", help="also write the fairness slice's per-face rows")
    parser.add_argument("--flip-test", action="store_true",
                        help="average each crop's prediction with its mirrored crop's (about 2x the regressor's time)")
    parser.add_argument("--shift-test", action="store_true",
                        help="also average the crops shifted by 7%% of their side in four directions (5x the "
                             "regressor's time; the synthetic faces are rendered crops and stay single-view)")
    parser.add_argument("--orientation-test", action="store_true",
                        help="regress faces lying on their side or upside down turned upright (extra passes only "
                             "for the crops whose flip disagreement flags them; FaceRecon.crop_orientation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    from facerecon.hub import load_model

    model = load_model(args.model)
    items = load_aflw2000(args.data, args.limit)
    results: dict[str, Any] = {"model": str(args.model or "default"), "data": str(args.data),
                               "flip_test": args.flip_test, "shift_test": args.shift_test,
                               "orientation_test": args.orientation_test}
    results["aflw2000"] = evaluate_aflw2000(model, items, with_ssim="ssim" not in args.skip, flip_test=args.flip_test,
                                            shift_test=args.shift_test, orientation_test=args.orientation_test)
    if "detection" not in args.skip:
        results["detection"] = detection_rate(items)
    if "pipeline" not in args.skip:
        results["pipeline"] = pipeline_nme(model, items, flip_test=args.flip_test, shift_test=args.shift_test,
                                           refine_steps=args.refine_steps, orientation_test=args.orientation_test)
        results["pipeline"]["protocol_nme_bins"] = protocol_nme_on_found(results["aflw2000"]["per_image"],
                                                                         results["pipeline"]["per_image"])
    if "synthetic" not in args.skip:
        results["synthetic"] = synthetic_vertex_error(model, n=args.synthetic, flip_test=args.flip_test,
                                                      orientation_test=args.orientation_test)
    if "timing" not in args.skip:
        results["timing"] = timing(model, items, flip_test=args.flip_test, shift_test=args.shift_test,
                                   orientation_test=args.orientation_test)
    if "fairness" not in args.skip:
        utk = args.fairness_data or Path(__file__).resolve().parents[1].parent / "shared" / "utkface"
        labels = args.pseudo_labels or default_pseudo_labels()
        if utk.is_dir() and labels.is_file():
            results["fairness"] = evaluate_fairness(model, utk, labels, limit=args.limit,
                                                    with_detection="detection" not in args.skip,
                                                    flip_test=args.flip_test, shift_test=args.shift_test,
                                                    orientation_test=args.orientation_test)
        else:
            logger.warning("fairness slice skipped: needs %s and %s (make the labels with training/pseudo_label.py)",
                           utk, labels)
    table = markdown_table(results)
    print(table)
    if "fairness" in results:
        print()
        print(fairness_table(results["fairness"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        saved = results
        if "fairness" in results and not args.per_face:
            # Per-face rows name UTKFace photos with their labels: kept out of the file unless asked for.
            saved = {**results, "fairness": {k: v for k, v in results["fairness"].items() if k != "per_face"}}
        args.json.write_text(json.dumps(saved, indent=1))
    return results


if __name__ == "__main__":
    main()
