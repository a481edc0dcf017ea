"""Real-photo training data: records, the extended 71-point landmark layout, splits and :class:`RealFaceDataset`.

Sources are 300-W, the AFLW crops and UTKFace; splits are grouped (same photo / near-duplicate) and stratified.

Coordinates follow :mod:`facerecon.geometry`: 0-based pixel centres, boxes ``[x0, y0, x1, y1]`` in continuous edge
coordinates. The 1-based (MATLAB / iBUG) source conventions are converted once, when records are built.

Extended landmark layout (71 points): 0-67 are the iBUG 68 points, 68 is the image-left eye centre (mean of 36-41),
69 the image-right eye centre (mean of 42-47) and 70 the mouth centre (mean of the inner lip, 60-67). Every sample has
``landmarks (71, 2)`` and ``weights (71,)``; weight 0 means "no target" (its coordinates are then 0 and meaningless).

Sources (``FACERECON_DATA`` or ``<checkout>/../shared``; the AFLW2000-3D benchmark folder is never read):

* ``300w``: 256 x 256 crops, 68 points (``pts68 - 1``); crop box ``box_from_points(pts, 1.6)`` (the whole crop).
  Jaw points (0-16) follow the visible outline, not the 3D contour, so they get weight :data:`JAW_TURNED_WEIGHT`
  when the estimated yaw (:func:`estimate_yaw_300w`) exceeds :data:`JAW_YAW_THRESHOLD_DEG`.
* ``aflw``: 120 x 120 crops with 21 visible-flagged points mapped by :data:`AFLW21_TO_EXTENDED`; the box is the whole
  crop enlarged by :data:`AFLW_BOX_SCALE` (see there for the measurement behind it). Near-duplicate crops are grouped
  (:func:`aflw_duplicate_groups`) so that they never straddle splits.
* ``utkface``: 200 x 200 aligned faces without landmarks (all weights 0); the box is the whole image. The race label
  is kept for fairness evaluation.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import math
import os
import re
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from facerecon.config import CANONICAL_CROP_SCALE, check_crop_scale
from facerecon.geometry import box_from_points
from facerecon.morphable.ict import MIRROR_68, cache_dir
from training.config import JAW_TURNED_WEIGHT, JAW_YAW_THRESHOLD_DEG

if TYPE_CHECKING:
    from training.augment import Augmenter

logger = logging.getLogger(__name__)

__all__ = [
    "AFLW21_TO_EXTENDED",
    "AFLW_BOX_SCALE",
    "EXTENDED_MIRROR",
    "N_LANDMARKS",
    "SOURCES",
    "SOURCE_IDS",
    "SPLITS",
    "FaceSample",
    "PseudoLabelStats",
    "RealFaceDataset",
    "Record",
    "aflw_box_scale_check",
    "add_pseudo_labels",
    "aflw_duplicate_groups",
    "data_root",
    "default_pseudo_label_path",
    "estimate_yaw_300w",
    "extend_landmarks",
    "extend_landmarks_np",
    "format_split_sizes",
    "load_300w",
    "load_aflw",
    "load_pseudo_labels",
    "load_records",
    "load_utkface",
    "make_splits",
    "pose_bin_label",
    "read_rgb",
    "scale_box",
    "split_sizes",
]

ENV_DATA = "FACERECON_DATA"
#: Folder of the validation benchmark inside the data root; training data code refuses to read from it.
FORBIDDEN_DIR = "aflw2000-3d-dev"

SOURCES: tuple[str, ...] = ("300w", "aflw", "utkface")
SOURCE_IDS: dict[str, int] = {name: i for i, name in enumerate(SOURCES)}
SPLITS: tuple[str, ...] = ("train", "val", "test")

N_LANDMARKS = 71
#: The 17 jaw points (iBUG 0-16) of the extended layout.
JAW_POINTS = slice(0, 17)
LEFT_EYE_CENTRE, RIGHT_EYE_CENTRE, MOUTH_CENTRE = 68, 69, 70

#: Left/right mirror permutation of the extended layout: ``mirrored[i] = points[EXTENDED_MIRROR[i]]`` after
#: ``x -> S - 1 - x``. Extends ``MIRROR_68`` with 68 <-> 69 (eye centres); 70 (mouth centre) is fixed. A tuple like
#: ``MIRROR_68``: index with ``torch.tensor(EXTENDED_MIRROR)`` or ``list(EXTENDED_MIRROR)`` (a tuple index means
#: several axes to numpy and torch).
EXTENDED_MIRROR: tuple[int, ...] = (*MIRROR_68, RIGHT_EYE_CENTRE, LEFT_EYE_CENTRE, MOUTH_CENTRE)

#: AFLW 21-point index -> extended-layout index (0-based), with AFLW's name and the 1-based iBUG number of the
#: aflw-crops README (3DDFA's 68 -> 21 map; "mean(a-b)" entries are the virtual points 68-70).
#:
#: ========  =====================  ============  ===========
#: AFLW idx  AFLW name              iBUG (1-b.)   extended
#: ========  =====================  ============  ===========
#: 0         LeftBrowLeftCorner     18            17
#: 1         LeftBrowCenter         20            19
#: 2         LeftBrowRightCorner    22            21
#: 3         RightBrowLeftCorner    23            22
#: 4         RightBrowCenter        25            24
#: 5         RightBrowRightCorner   27            26
#: 6         LeftEyeLeftCorner      37            36
#: 7         LeftEyeCenter          mean(37-42)   68
#: 8         LeftEyeRightCorner     40            39
#: 9         RightEyeLeftCorner     43            42
#: 10        RightEyeCenter         mean(43-48)   69
#: 11        RightEyeRightCorner    46            45
#: 12        LeftEar                3             2   (weight AFLW_EAR_WEIGHT)
#: 13        NoseLeft               32            31
#: 14        NoseCenter (tip)       31            30
#: 15        NoseRight              36            35
#: 16        RightEar               15            14  (weight AFLW_EAR_WEIGHT)
#: 17        MouthLeftCorner        49            48
#: 18        MouthCenter            mean(61-68)   70
#: 19        MouthRightCorner       55            54
#: 20        ChinCenter             9             8
#: ========  =====================  ============  ===========
AFLW21_TO_EXTENDED: tuple[int, ...] = (17, 19, 21, 22, 24, 26, 36, 68, 39, 42, 69, 45, 2, 31, 30, 35, 14, 48, 70, 54, 8)
#: AFLW ear points are ear lobes; 3DDFA maps them to jaw points 2 / 14, which sit somewhat lower on the contour, so they
#: are trusted half as much as the other points.
AFLW_EAR_WEIGHT = 0.5
#: The AFLW 120 x 120 crops are 3DDFA landmark boxes that are tighter than the project's 1.6 rule. Measured with
#: :func:`aflw_box_scale_check` (crop side / bounding box of the same visible point subset, AFLW vs 300-W with the 1.6
#: rule): AFLW / 300-W = 0.879 on the subset's max side and 0.919 on its brow-to-chin height (the pose-robust measure;
#: 0.94 / 0.93 / 0.91 / 0.91 per yaw bin 0-30 / 30-60 / 60-90 / >90); the visible points' bounding-box centre is
#: unbiased (median offset < 0.5 % of the side; per-crop scatter 3.5 %). The bias is systematic in every bin and
#: the bbox measure exceeds 10 %, so the AFLW box is enlarged by ~1 / 0.92 about the crop centre.
AFLW_BOX_SCALE = 1.09
AFLW_CROP_SIZE = 120
AFLW_YAW_BINS: tuple[str, ...] = ("0-30", "30-60", "60-90", ">90")

#: Nose-tip offset model of :func:`estimate_yaw_300w`: ``1 - 2 r = k tan(yaw)``. ``k`` was fitted on AFLW's labelled
#: yaw (4,625 crops with both eye centres and the nose tip visible; the median offset per 5-degree yaw bin follows
#: ``k tan(yaw)`` up to ~55 deg); the estimate then has r = 0.94 and a mean abs. error of 9 deg against the labels.
YAW_NOSE_OFFSET_K = 1.15

UTK_SIZE = 200
UTK_RACES: tuple[str, ...] = ("white", "black", "asian", "indian", "others")

# Near-duplicate detection on AFLW (see aflw_duplicate_groups).
DUP_CACHE_VERSION = 5
DUP_PHASH_MAX_DIST = 12
DUP_COSINE_NEIGHBOURS = 10
DUP_COSINE_MIN = 0.7
DUP_LOWPASS_NCC_MIN = 0.8
DUP_HIGHPASS_NCC_MIN = 0.6
DUP_HIGHPASS_NCC_SURE = 0.7
DUP_TONE_MAX_MEAN_DIFF = 16.0
DUP_TONE_MAX_STD_RATIO = 1.2


# ----------------------------------------------------------------------------------------------------------------------
# Landmark layout


def extend_landmarks(lmk68: torch.Tensor) -> torch.Tensor:
    """Append the three virtual points (eye centres, mouth centre) to iBUG-68 landmarks.

    Args:
        lmk68: (B, 68, D) landmarks, D = 2 or 3 (any leading dims).

    Returns:
        (B, 71, D): points 0-67 unchanged, 68 = mean(36-41), 69 = mean(42-47), 70 = mean(60-67).
    """
    if lmk68.shape[-2] != 68:
        raise ValueError(f"extend_landmarks expects (..., 68, D) landmarks, got shape {tuple(lmk68.shape)}")
    extra = torch.stack(
        [lmk68[..., 36:42, :].mean(-2), lmk68[..., 42:48, :].mean(-2), lmk68[..., 60:68, :].mean(-2)], dim=-2
    )
    return torch.cat([lmk68, extra], dim=-2)


def extend_landmarks_np(lmk68: np.ndarray) -> np.ndarray:
    """Numpy version of :func:`extend_landmarks` for (..., 68, 2) arrays."""
    extra = np.stack([lmk68[..., 36:42, :].mean(-2), lmk68[..., 42:48, :].mean(-2), lmk68[..., 60:68, :].mean(-2)], -2)
    return np.concatenate([lmk68, extra], axis=-2)


def estimate_yaw_300w(lmk68: np.ndarray) -> np.ndarray:
    """Rough yaw (degrees) from 68 landmarks: where the nose tip lies between the two eye centres.

    ``r`` is the nose tip (30) projected onto the segment from the image-left to the image-right eye centre (0 at the
    left eye, 1 at the right eye). The tip sits in front of the eyes, so ``1 - 2 r ~ k tan(yaw)``
    (:data:`YAW_NOSE_OFFSET_K`, calibrated on AFLW's labelled yaw) and ``yaw = atan((1 - 2 r) / k)``. Sign as AFLW /
    AFLW2000-3D: positive = face turned towards the image left. Projecting on the eye axis makes it roll-invariant.
    About 9 deg mean error up to ~55 deg; unreliable beyond (the far eye is hidden).

    Args:
        lmk68: (..., 68, 2) image points.

    Returns:
        (...,) yaw estimates in degrees.
    """
    left = lmk68[..., 36:42, :].mean(-2)
    right = lmk68[..., 42:48, :].mean(-2)
    axis = right - left
    r = ((lmk68[..., 30, :] - left) * axis).sum(-1) / np.maximum((axis * axis).sum(-1), 1e-6)
    return np.degrees(np.arctan((1.0 - 2.0 * r) / YAW_NOSE_OFFSET_K))


def pose_bin_label(yaw: float) -> str:
    """AFLW-style bin of |yaw| in degrees ("unknown" for NaN)."""
    if not math.isfinite(yaw):
        return "unknown"
    a = abs(yaw)
    return "0-30" if a <= 30 else "30-60" if a <= 60 else "60-90" if a <= 90 else ">90"


# ----------------------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, eq=False)
class FaceSample:
    """One face of a real-photo source, in the coordinates of its image file.

    Attributes:
        source: "300w", "aflw" or "utkface".
        name: image file name inside the source's ``images/`` folder (unique within the source).
        image_path: path of the image file.
        box: (4,) float64 crop box ``[x0, y0, x1, y1]`` in image pixels (before augmentation).
        landmarks: (71, 2) float32 extended-layout landmarks in image pixels (0-based centres; 0 where no target).
        weights: (71,) float32 per-point loss weights (0 = no target).
        yaw: labelled yaw in degrees (AFLW only), NaN if unknown; positive = face turned towards the image left.
        yaw_estimate: yaw estimated from the landmarks (300-W only, :func:`estimate_yaw_300w`), else NaN.
        pose_bin: |yaw| bin ("0-30", "30-60", "60-90", ">90") from ``yaw`` or ``yaw_estimate``, else "unknown".
        stratum: the split stratum inside the source (300-W subset, AFLW yaw bin, UTKFace race).
        group: faces with the same group (same photo, near-duplicate crop) always land in the same split.
        race: UTKFace race code (0 white, 1 black, 2 asian, 3 indian, 4 others), -1 elsewhere.
        meta: extra source labels (300-W subset, UTKFace age / gender).
        depth: (71,) float32 relative depth of the extended-layout points in image pixels (larger = farther from
            the camera; from pseudo-labels, up to an unknown offset and scale), or None.
    """

    source: str
    name: str
    image_path: Path
    box: np.ndarray
    landmarks: np.ndarray
    weights: np.ndarray
    yaw: float = math.nan
    yaw_estimate: float = math.nan
    pose_bin: str = "unknown"
    stratum: str = ""
    group: str = ""
    race: int = -1
    meta: dict[str, Any] = field(default_factory=dict)
    depth: np.ndarray | None = None

    @property
    def key(self) -> str:
        """``"<source>/<name>"``, unique across sources."""
        return f"{self.source}/{self.name}"

    @property
    def has_landmarks(self) -> bool:
        """True if any landmark has a non-zero weight."""
        return bool((self.weights > 0).any())


#: Alias: the split functions return lists of these records.
Record = FaceSample


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The shared data folder: ``root`` if given, else ``$FACERECON_DATA``, else ``<checkout>/../shared``.

    Raises:
        FileNotFoundError: the folder does not exist (the message says where it was looked for).
        ValueError: the folder is the AFLW2000-3D validation benchmark (never a training source).
    """
    if root is not None:
        path, how = Path(root).expanduser(), "the root argument"
    elif os.environ.get(ENV_DATA):
        path, how = Path(os.environ[ENV_DATA]).expanduser(), f"${ENV_DATA}"
    else:
        path, how = Path(__file__).resolve().parents[1].parent / "shared", "the default <checkout>/../shared"
    if FORBIDDEN_DIR in path.resolve().parts:
        raise ValueError(f"data root {path} is inside {FORBIDDEN_DIR}, the validation benchmark; never train on it")
    if not path.is_dir():
        raise FileNotFoundError(
            f"training data folder {path} (from {how}) does not exist; set {ENV_DATA} to the folder that holds "
            f"'300w/', 'aflw-crops/' and 'utkface/'"
        )
    return path


def _source_dir(root: str | os.PathLike | None, folder: str, needed: str) -> Path:
    path = data_root(root) / folder
    if not (path / needed).is_file():
        raise FileNotFoundError(f"{path / needed} not found: the {folder!r} data set is missing from the data root")
    return path


def _photo_stem(src_file: str) -> str:
    """Source photo of a 300-W face: file stem without the ``_N`` face suffix."""
    return re.sub(r"_\d+$", "", Path(src_file).stem)


def load_300w(root: str | os.PathLike | None = None) -> list[FaceSample]:
    """300-W (AFW + HELEN) records: 68 points (0-based) + virtual points, box = ``box_from_points(pts, 1.6)``.

    Jaw points get weight :data:`JAW_TURNED_WEIGHT` when ``|estimate_yaw_300w| > JAW_YAW_THRESHOLD_DEG``. Faces cut
    from the same source photo share a group.
    """
    folder = _source_dir(root, "300w", "landmarks.npz")
    with np.load(folder / "landmarks.npz") as d:
        names, subsets, src_files = d["names"], d["subset"], d["src_file"]
        pts = d["pts68"].astype(np.float64) - 1.0  # 1-based -> 0-based pixel centres
    ext = extend_landmarks_np(pts).astype(np.float32)
    yaw_est = estimate_yaw_300w(pts)
    boxes = box_from_points(torch.from_numpy(pts), CANONICAL_CROP_SCALE).numpy()
    out = []
    for i, name in enumerate(names):
        w = np.ones(N_LANDMARKS, dtype=np.float32)
        if abs(yaw_est[i]) > JAW_YAW_THRESHOLD_DEG:
            w[:17] = JAW_TURNED_WEIGHT
        out.append(FaceSample(
            source="300w", name=str(name), image_path=folder / "images" / str(name), box=boxes[i], landmarks=ext[i],
            weights=w, yaw_estimate=float(yaw_est[i]), pose_bin=pose_bin_label(float(yaw_est[i])),
            stratum=str(subsets[i]), group=f"300w/{_photo_stem(str(src_files[i]))}", meta={"subset": str(subsets[i])},
        ))
    return out


def far_jaw_points(yaw: float) -> slice:
    """The jaw points (iBUG 0-16) on the side a face turned by ``yaw`` degrees turns away from the camera.

    Convention: AFLW2000-3D / :func:`estimate_yaw_300w` yaw sign; positive yaw turns the subject's left side
    (points 9-16, model +x) towards the camera, so points 0-7 are the far side; the chin (8) is never far.
    """
    return slice(0, 8) if yaw > 0 else slice(9, 17)


def reweight_turned_jaw(records: Sequence[FaceSample], weight: float, side: str = "both",
                        min_yaw: float = JAW_YAW_THRESHOLD_DEG) -> list[FaceSample]:
    """Copies of ``records`` whose turned 300-W faces give their jaw points ``weight`` instead.

    Turned = ``|yaw_estimate| > min_yaw``. The 300-W jaw follows the visible outline, while synthetic faces and
    AFLW2000-3D use the 3D jaw contour (hidden behind the face when turned); ``weight=0`` removes that conflict.
    On the side that faces the camera the visible outline *is* the jaw contour, so ``side="far"`` reweights only
    the far side (:func:`far_jaw_points`) and keeps the near side and the chin; ``side="both"`` reweights all of
    points 0-16. Other records are returned unchanged.
    """
    if weight < 0:
        raise ValueError(f"jaw weight must be >= 0, got {weight}")
    if side not in ("both", "far"):
        raise ValueError(f"side must be 'both' or 'far', got {side!r}")
    out = []
    for r in records:
        if r.source == "300w" and abs(r.yaw_estimate) > min_yaw:
            w = r.weights.copy()
            w[slice(0, 17) if side == "both" else far_jaw_points(r.yaw_estimate)] = weight
            r = dataclasses.replace(r, weights=w)
        out.append(r)
    return out


def default_pseudo_label_path(source: str, folder: str | os.PathLike | None = None) -> Path:
    """The ``<source>_mediapipe.npz`` file ``training/pseudo_label.py`` writes, in ``folder`` or the facerecon cache."""
    return (Path(folder) if folder else cache_dir() / "pseudo") / f"{source}_mediapipe.npz"


@dataclass
class PseudoLabelStats:
    """What :func:`add_pseudo_labels` did to one source: records seen, labelled, accepted, points added."""

    records: int = 0
    labelled: int = 0
    accepted: int = 0
    points: int = 0

    def __str__(self) -> str:
        return (f"{self.accepted}/{self.records} faces accepted ({self.labelled} labelled), "
                f"{self.points} points added")


def load_pseudo_labels(path: str | os.PathLike, mapping: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Read a ``training/pseudo_label.py`` file: ``names``, ``landmarks`` (N, 68, 2), ``found``, ``depth`` (N, 68).

    Args:
        path: the ``.npz`` file.
        mapping: a MediaPipe -> iBUG correspondence JSON (:mod:`training.pseudo_map`); the landmarks are then
            recomputed from the stored MediaPipe points (``mesh``) instead of the file's fixed correspondence.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-label file {path} not found; make it with training/pseudo_label.py")
    with np.load(path) as d:
        labels = {k: d[k] for k in d.files if k in ("names", "landmarks", "depth", "found", "mesh")}
    if mapping is not None:
        from training.pseudo_map import apply_map, load_map

        if "mesh" not in labels:
            raise ValueError(f"{path} has no MediaPipe points ('mesh') to apply {mapping} to: re-run pseudo_label.py")
        mapped = apply_map(labels["mesh"], load_map(mapping)).astype(np.float32)
        labels["landmarks"], labels["depth"] = mapped[..., :2], mapped[..., 2]
    labels.pop("mesh", None)
    return labels


def add_pseudo_labels(records: Sequence[FaceSample], labels: str | os.PathLike | dict[str, np.ndarray],
                      weight: float = 0.5, max_nme: float = 0.08, min_shared: int = 6,
                      jaw_max_yaw: float | None = None, jaw_depth: bool = True
                      ) -> tuple[list[FaceSample], PseudoLabelStats]:
    """Fill the missing targets of records with pseudo-labels (``training/pseudo_label.py``) that agree with them.

    A record with a pseudo-label is accepted when the pseudo-label's extended-layout points that coincide with the
    record's trusted manual targets (weight >= 1, at least ``min_shared`` of them) are within ``max_nme`` of them
    (mean error / sqrt(w * h) of the manual points' box). Accepted records get the pseudo-label at every point that
    has no manual target (weight 0: hidden AFLW points, the AFLW jaw and contours, dropped 300-W turned jaws), with
    loss weight ``weight``; manual targets are kept as they are, and the pseudo-label's relative depth of all 71 points
    (when the labels have ``depth``) becomes the record's ``depth``. Other records are returned unchanged.

    Args:
        records: records of one source, in the coordinates of their image files.
        labels: the ``.npz`` file (or its arrays) with ``names`` (N,), ``landmarks`` (N, 68, 2) in 0-based pixel
            centres of the image files, ``found`` (N,), optionally ``depth`` (N, 68) in the same pixels.
        weight: loss weight of the added points, in (0, 1].
        max_nme: agreement gate.
        min_shared: fewest manual points needed to judge agreement.
        jaw_max_yaw: when set, the 17 jaw points are filled only on faces with a known |yaw| (AFLW's label, else
            300-W's estimate) up to this many degrees. MediaPipe's face-oval points are fixed points on the front
            of the jaw; at large yaw they no longer stand for jaw landmarks defined further back (see
            :func:`training.fit_landmarks.ear_anchored_jaw`).
        jaw_depth: keep the jaw points' pseudo-label depth (False: NaN, i.e. no depth target there).

    Returns:
        The records (accepted ones replaced by updated copies) and the :class:`PseudoLabelStats`.
    """
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"pseudo-label weight must be in (0, 1], got {weight}")
    if max_nme <= 0:
        raise ValueError(f"max_nme must be > 0, got {max_nme}")
    if not isinstance(labels, dict):
        labels = load_pseudo_labels(labels)
    missing = {"names", "landmarks", "found"} - set(labels)
    if missing:
        raise ValueError(f"pseudo-labels lack {sorted(missing)}")
    pts = np.asarray(labels["landmarks"], dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise ValueError(f"pseudo-label landmarks must be (N, 68, 2), got {pts.shape}")
    index = {str(n): i for i, n in enumerate(labels["names"])}
    found = np.asarray(labels["found"], dtype=bool)
    depth_all = np.asarray(labels["depth"], dtype=np.float64) if "depth" in labels else None
    stats = PseudoLabelStats(records=len(records))
    out = []
    for r in records:
        i = index.get(r.name)
        if i is None or not found[i] or not np.isfinite(pts[i]).all():
            out.append(r)
            continue
        stats.labelled += 1
        ext = extend_landmarks_np(pts[i])
        trusted = r.weights >= 1.0  # down-weighted targets (AFLW ear lobes, turned 300-W jaws) do not judge
        if trusted.sum() < min_shared:
            out.append(r)
            continue
        g = r.landmarks[trusted].astype(np.float64)
        size = math.sqrt(max(float(np.prod(g.max(0) - g.min(0))), 1e-6))
        if np.linalg.norm(ext[trusted] - g, axis=1).mean() / size > max_nme:
            out.append(r)
            continue
        fill = r.weights <= 0
        if jaw_max_yaw is not None:
            yaw = r.yaw if math.isfinite(r.yaw) else r.yaw_estimate
            if not (math.isfinite(yaw) and abs(yaw) <= jaw_max_yaw):
                fill[JAW_POINTS] = False
        lmk = r.landmarks.copy()
        w = r.weights.copy()
        lmk[fill] = ext[fill]
        w[fill] = weight
        depth = None
        if depth_all is not None and np.isfinite(depth_all[i]).all():
            depth = extend_landmarks_np(depth_all[i][:, None])[:, 0].astype(np.float32)
            if not jaw_depth:
                depth[JAW_POINTS] = np.nan
        stats.accepted += 1
        stats.points += int(fill.sum())
        out.append(dataclasses.replace(r, landmarks=lmk.astype(np.float32), weights=w, depth=depth))
    return out, stats


def _aflw_box() -> np.ndarray:
    c, half = (AFLW_CROP_SIZE - 1) / 2.0, AFLW_BOX_SCALE * AFLW_CROP_SIZE / 2.0
    return np.array([c - half, c - half, c + half, c + half], dtype=np.float64)


def load_aflw(root: str | os.PathLike | None = None, dedup: bool = True) -> list[FaceSample]:
    """AFLW 120 x 120 crop records: 21 points mapped by :data:`AFLW21_TO_EXTENDED`, invisible points weight 0.

    Args:
        root: data root (see :func:`data_root`).
        dedup: group near-duplicate crops (:func:`aflw_duplicate_groups`, cached); if False each crop is its own group.
    """
    folder = _source_dir(root, "aflw-crops", "landmarks.npz")
    with np.load(folder / "landmarks.npz") as d:
        names, pts, visible, yaws, bins = d["names"], d["pts21"], d["visible"], d["yaw"], d["yaw_bin"]
    groups = aflw_duplicate_groups(root) if dedup else np.arange(len(names))
    box = _aflw_box()
    pts0 = np.where(visible[..., None], pts - 1.0, 0.0).astype(np.float32)  # 1-based -> 0-based; NaN -> 0
    point_w = np.ones(21, dtype=np.float32)
    point_w[[12, 16]] = AFLW_EAR_WEIGHT
    out = []
    for i, name in enumerate(names):
        lmk = np.zeros((N_LANDMARKS, 2), dtype=np.float32)
        w = np.zeros(N_LANDMARKS, dtype=np.float32)
        lmk[list(AFLW21_TO_EXTENDED)] = pts0[i]
        w[list(AFLW21_TO_EXTENDED)] = point_w * visible[i]
        out.append(FaceSample(
            source="aflw", name=str(name), image_path=folder / "images" / str(name), box=box, landmarks=lmk,
            weights=w, yaw=float(yaws[i]), pose_bin=str(bins[i]), stratum=str(bins[i]),
            group=f"aflw/{names[groups[i]]}",
        ))
    return out


def load_utkface(root: str | os.PathLike | None = None) -> list[FaceSample]:
    """UTKFace records: no landmarks (weights 0), box = the whole 200 x 200 aligned crop, race kept."""
    folder = _source_dir(root, "utkface", "index.csv")
    box = np.array([-0.5, -0.5, UTK_SIZE - 0.5, UTK_SIZE - 0.5], dtype=np.float64)
    lmk = np.zeros((N_LANDMARKS, 2), dtype=np.float32)
    w = np.zeros(N_LANDMARKS, dtype=np.float32)
    out = []
    with open(folder / "index.csv", newline="") as f:
        for row in csv.DictReader(f):
            race = int(row["race"])
            out.append(FaceSample(
                source="utkface", name=row["name"], image_path=folder / "images" / row["name"], box=box,
                landmarks=lmk, weights=w, stratum=UTK_RACES[race], group=f"utkface/{row['name']}", race=race,
                meta={"age": int(row["age"]), "gender": int(row["gender"])},
            ))
    return out


_LOADERS = {"300w": load_300w, "aflw": load_aflw, "utkface": load_utkface}


def _check_sources(sources: Iterable[str]) -> tuple[str, ...]:
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    bad = [s for s in sources if s not in _LOADERS]
    if bad or not sources:
        raise ValueError(f"unknown data sources {bad or sources!r}; choose from {SOURCES}")
    return sources


def load_records(sources: Iterable[str] = SOURCES, root: str | os.PathLike | None = None) -> list[FaceSample]:
    """Records of the given sources, in source order then file order."""
    out: list[FaceSample] = []
    for s in _check_sources(sources):
        out.extend(_LOADERS[s](root))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# AFLW near-duplicates


def _dct_matrix(n: int, k: int) -> np.ndarray:
    """First ``k`` rows of the orthonormal DCT-II matrix of size ``n``."""
    x = np.arange(n)
    m = np.cos(np.pi * (2 * x[None] + 1) * np.arange(k)[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.astype(np.float32)


def _phash(thumbs32: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hashes of (N, 32, 32) float32 grayscale thumbnails -> (N,) uint64."""
    c = _dct_matrix(32, 8)
    coef = (c @ thumbs32 @ c.T).reshape(len(thumbs32), 64)
    bits = coef > np.median(coef[:, 1:], axis=1, keepdims=True)
    bits[:, 0] = False  # DC term: brightness only
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _shift_ncc(a: np.ndarray, b: np.ndarray, margin: int) -> float:
    """Shift-tolerant NCC of two thumbnails: the centre of each searched in the other (+/-margin px), min of both."""
    r1 = cv2.matchTemplate(b, a[margin:-margin, margin:-margin], cv2.TM_CCOEFF_NORMED).max()
    r2 = cv2.matchTemplate(a, b[margin:-margin, margin:-margin], cv2.TM_CCOEFF_NORMED).max()
    return float(min(r1, r2))


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (``np.bitwise_count`` on numpy >= 2, else via unpackbits)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x[..., None].view(np.uint8), axis=-1).sum(-1)


def _candidate_pairs(phash: np.ndarray, desc: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """(M, 2) index pairs i < j that are near in pHash or among each other's nearest thumbnail neighbours."""
    n = len(phash)
    pairs = []
    k = min(DUP_COSINE_NEIGHBOURS, n - 1)
    for s in range(0, n, chunk):
        rows = np.arange(s, min(s + chunk, n))
        ham = _popcount(phash[rows, None] ^ phash[None, :])
        i, j = np.nonzero(ham <= DUP_PHASH_MAX_DIST)
        pairs.append(np.stack([rows[i], j], 1))
        if k > 0:
            cos = desc[rows] @ desc.T
            cos[np.arange(len(rows)), rows] = -1.0
            nb = np.argpartition(-cos, k - 1, axis=1)[:, :k]
            keep = np.take_along_axis(cos, nb, 1) >= DUP_COSINE_MIN
            pairs.append(np.stack([np.repeat(rows, k)[keep.ravel()], nb.ravel()[keep.ravel()]], 1))
    p = np.concatenate(pairs)
    p = np.sort(p, axis=1)
    p = p[p[:, 0] < p[:, 1]]
    return np.unique(p, axis=0)


def _valid_rects(thumbs: np.ndarray, dark: int = 12) -> np.ndarray:
    """Inner rectangles ``(x0, y0, x1, y1)`` of (N, H, W) thumbnails without their black border bands (padding).

    A border column / row belongs to a band while at most 5 % of its pixels are brighter than ``dark``; at most half
    the side per edge.
    """
    n, h, w = thumbs.shape
    bright = thumbs > dark
    col_dark = bright.mean(1) <= 0.05  # (N, W)
    row_dark = bright.mean(2) <= 0.05  # (N, H)

    def lead(mask: np.ndarray) -> np.ndarray:
        half = mask.shape[1] // 2
        return np.cumprod(mask[:, :half], axis=1).sum(1)

    return np.stack([lead(col_dark), lead(row_dark), w - lead(col_dark[:, ::-1]), h - lead(row_dark[:, ::-1])], 1)


def _descriptors(thumb: np.ndarray, rect: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Padding-blind low-pass (40 x 40) and high-pass (60 x 60) thumbnails and (mean, std) tone of a 60 x 60 crop.

    Border bands are filled by edge replication before filtering and zeroed in the high-pass image, so a shared
    padding edge cannot make two different faces match.
    """
    x0, y0, x1, y1 = (int(v) for v in rect)
    f = thumb.astype(np.float32)
    inner = f[y0:y1, x0:x1]
    tone = (float(inner.mean()), float(inner.std()))
    if (x0, y0, x1, y1) != (0, 0, *thumb.shape[::-1]):
        f = cv2.copyMakeBorder(np.ascontiguousarray(f[y0:y1, x0:x1]), y0, f.shape[0] - y1, x0, f.shape[1] - x1,
                               cv2.BORDER_REPLICATE)
    low = cv2.resize(cv2.GaussianBlur(f, (0, 0), 0.5), (40, 40), interpolation=cv2.INTER_AREA)
    high = f - cv2.GaussianBlur(f, (0, 0), 2.5)
    mask = np.zeros_like(high)
    mask[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = 1.0
    return low, high * mask, tone


def _compute_aflw_pairs(folder: Path, names: np.ndarray) -> dict[str, np.ndarray]:
    """Perceptual hashes and verified-pair scores of the AFLW crops (uncached)."""
    t0 = time.perf_counter()
    thumbs = np.empty((len(names), 60, 60), dtype=np.uint8)
    for i, name in enumerate(names):
        img = cv2.imread(str(folder / "images" / str(name)), cv2.IMREAD_REDUCED_GRAYSCALE_2)
        if img is None:
            raise FileNotFoundError(f"cannot read AFLW crop {folder / 'images' / str(name)}")
        thumbs[i] = img if img.shape == (60, 60) else cv2.resize(img, (60, 60), interpolation=cv2.INTER_AREA)
    f = thumbs.astype(np.float32)
    t32 = np.stack([cv2.resize(x, (32, 32), interpolation=cv2.INTER_AREA) for x in f])
    phash = _phash(t32)
    desc = f.reshape(len(f), 12, 5, 12, 5).mean((2, 4)).reshape(len(f), 144)
    desc -= desc.mean(1, keepdims=True)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True) + 1e-6
    pairs = _candidate_pairs(phash, desc)
    described = [_descriptors(x, r) for x, r in zip(thumbs, _valid_rects(thumbs), strict=True)]
    lowpass, highpass, tone = [d[0] for d in described], [d[1] for d in described], [d[2] for d in described]
    low = np.array([_shift_ncc(lowpass[i], lowpass[j], 6) for i, j in pairs], dtype=np.float32)
    # The high-pass score decides; the low-pass gate drops pairs that only share fine texture, not the layout.
    scores = np.full(len(pairs), -1.0, dtype=np.float32)
    for k in np.flatnonzero(low >= DUP_LOWPASS_NCC_MIN):
        scores[k] = _shift_ncc(highpass[pairs[k, 0]], highpass[pairs[k, 1]], 8)
    logger.info("AFLW duplicate scan: %d crops, %d candidate pairs scored in %.1f s", len(names), len(pairs),
                time.perf_counter() - t0)
    return {"names": names, "phash": phash, "tone": np.array(tone, dtype=np.float32), "pairs": pairs.astype(np.int32),
            "lowpass": low, "scores": scores}


def _aflw_pairs(root: str | os.PathLike | None, use_cache: bool) -> dict[str, np.ndarray]:
    """Cached :func:`_compute_aflw_pairs`, keyed by the data folder, its annotation file and the algorithm version."""
    folder = _source_dir(root, "aflw-crops", "landmarks.npz")
    with np.load(folder / "landmarks.npz") as d:
        names = d["names"]
    st = (folder / "landmarks.npz").stat()
    key_src = f"{folder.resolve()}|{st.st_size}|{st.st_mtime_ns}|{len(names)}|v{DUP_CACHE_VERSION}"
    path = cache_dir() / f"aflw_dups_{hashlib.sha1(key_src.encode()).hexdigest()[:16]}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path) as c:
                cached = {k: c[k] for k in c.files}
            if np.array_equal(cached["names"], names):
                return cached
            logger.warning("AFLW duplicate cache %s does not match the data; recomputing", path)
        except (OSError, ValueError, KeyError) as e:
            logger.warning("AFLW duplicate cache %s unreadable (%s); recomputing", path, e)
    result = _compute_aflw_pairs(folder, names)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **result)
            os.replace(tmp, path)
        except OSError as e:
            logger.warning("could not write the AFLW duplicate cache %s: %s", path, e)
    return result


def _connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component label (the smallest member index) of each of ``n`` nodes linked by (M, 2) ``pairs``."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def aflw_duplicate_groups(root: str | os.PathLike | None = None, use_cache: bool = True) -> np.ndarray:
    """Group near-duplicate AFLW crops (the same or a near-identical photo stored under another AFLW ID).

    1. Candidates: pairs whose 64-bit DCT perceptual hashes (32 x 32 grayscale, 8 x 8 low frequencies) differ in at
       most :data:`DUP_PHASH_MAX_DIST` bits, plus each crop's :data:`DUP_COSINE_NEIGHBOURS` nearest neighbours by
       cosine of 12 x 12 thumbnails (>= :data:`DUP_COSINE_MIN`). By eye, the pHash alone is not enough: at 6-10 bits
       it already pairs different people in the same pose, and duplicates with shifted crop boxes reach 14-22 bits.
    2. Verification on 60 x 60 thumbnails with black padding bands masked out: a shift-tolerant low-pass NCC
       >= :data:`DUP_LOWPASS_NCC_MIN` (same layout), then a shift-tolerant (+/-8 px) NCC of high-passed thumbnails
       (same fine detail), which is bimodal with a valley at 0.6-0.7. A pair is a duplicate if the high-pass score is
       >= :data:`DUP_HIGHPASS_NCC_SURE`, or >= :data:`DUP_HIGHPASS_NCC_MIN` with a similar tone (mean within
       :data:`DUP_TONE_MAX_MEAN_DIFF` grey levels, std ratio <= :data:`DUP_TONE_MAX_STD_RATIO`): by eye, the
       different-person matches in that band were silhouettes with different lighting. Checked by eye on ~300 pairs
       around the thresholds (estimated ~98 % precision, ~95 % recall per pair; groups are connected components, so
       a missed pair rarely splits a group).

    Hashes, tones and pair scores are cached under the facerecon cache folder (``~/.cache/facerecon``), keyed by the
    data folder; a fresh scan of the 10k crops takes ~15 s.

    Returns:
        (N,) int array in ``landmarks.npz`` row order: the row index of each crop's group representative (its first
        member), so crops with equal values are duplicates.
    """
    res = _aflw_pairs(root, use_cache)
    pairs, scores, tone = res["pairs"], res["scores"], res["tone"]
    t0, t1 = tone[pairs[:, 0]], tone[pairs[:, 1]]
    similar_tone = (np.abs(t0[:, 0] - t1[:, 0]) <= DUP_TONE_MAX_MEAN_DIFF) & (
        np.maximum(t0[:, 1], t1[:, 1]) <= DUP_TONE_MAX_STD_RATIO * np.maximum(np.minimum(t0[:, 1], t1[:, 1]), 1.0))
    dup = (scores >= DUP_HIGHPASS_NCC_SURE) | ((scores >= DUP_HIGHPASS_NCC_MIN) & similar_tone)
    return _connected_components(len(res["names"]), pairs[dup])


# ----------------------------------------------------------------------------------------------------------------------
# Splits


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (len(SPLITS),) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be {len(SPLITS)} non-negative numbers ({'/'.join(SPLITS)}) summing to 1, "
                         f"got {tuple(fractions)}")
    return f


def make_splits(seed: int = 0, fractions: Sequence[float] = (0.7, 0.15, 0.15), sources: Iterable[str] = SOURCES,
                root: str | os.PathLike | None = None,
                records: Sequence[FaceSample] | None = None) -> dict[str, list[FaceSample]]:
    """Deterministic train / val / test split, stratified by source and stratum, keeping groups together.

    Within each (source, stratum) cell (300-W subset, AFLW yaw bin, UTKFace race) the groups (300-W source photo,
    AFLW near-duplicate set, else the single face) are shuffled with a generator seeded by ``seed`` and the cell
    name, and each group goes to the split furthest below its quota. A group whose members fall in several strata
    belongs to the most common one.

    Args:
        seed: split seed.
        fractions: (train, val, test) fractions, summing to 1.
        sources: sources to load (ignored when ``records`` is given).
        root: data root (see :func:`data_root`).
        records: split these records instead of loading ``sources``.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each in the input record order.
    """
    frac = _check_fractions(fractions)
    recs = list(records) if records is not None else load_records(sources, root)
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(recs):
        members[(r.source, r.group or r.key)].append(i)
    cells: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for gkey, idx in members.items():
        stratum = Counter(recs[i].stratum for i in idx).most_common(1)[0][0]
        cells[(gkey[0], stratum)].append(gkey)
    assign = np.empty(len(recs), dtype=np.int64)
    for cell in sorted(cells):
        groups = sorted(cells[cell])
        rng = np.random.default_rng([seed, zlib.crc32(f"{cell[0]}/{cell[1]}".encode())])
        counts, total = np.zeros(len(SPLITS)), 0
        for g in rng.permutation(len(groups)):
            idx = members[groups[g]]
            total += len(idx)
            s = int(np.argmax(frac * total - counts))
            counts[s] += len(idx)
            assign[idx] = s
    return {name: [r for r, a in zip(recs, assign, strict=True) if a == s] for s, name in enumerate(SPLITS)}


def split_sizes(splits: dict[str, Sequence[FaceSample]]) -> dict[str, dict[str, dict[str, int]]]:
    """Sizes per split, source and stratum: ``{split: {source: {stratum: n, "total": n}}}``."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split, recs in splits.items():
        per: dict[str, Counter] = defaultdict(Counter)
        for r in recs:
            per[r.source][r.stratum] += 1
        out[split] = {src: {**dict(sorted(c.items())), "total": sum(c.values())} for src, c in per.items()}
    return out


def format_split_sizes(splits: dict[str, Sequence[FaceSample]]) -> str:
    """A text table of :func:`split_sizes` (one line per source and stratum) for logging."""
    sizes = split_sizes(splits)
    names = list(sizes)
    keys = sorted({(src, st) for s in sizes.values() for src, c in s.items() for st in c},
                  key=lambda k: (SOURCES.index(k[0]) if k[0] in SOURCES else 99, k[1] == "total", k[1]))
    lines = [f"{'source':<8} {'stratum':<12} " + " ".join(f"{n:>7}" for n in names)]
    for src, st in keys:
        lines.append(f"{src:<8} {st:<12} " + " ".join(f"{sizes[n].get(src, {}).get(st, 0):>7}" for n in names))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# AFLW box check


def aflw_box_scale_check(root: str | os.PathLike | None = None) -> dict[str, float]:
    """Measure how the AFLW crop box compares with the 300-W 1.6 rule (the evidence for :data:`AFLW_BOX_SCALE`).

    For each AFLW crop, the crop side over the max side of its visible points' bounding box is compared with the
    median, over 300-W, of the 1.6-rule box side over the bounding box of the same point subset; and, pose-robustly,
    the crop side over the brow-to-chin height (crops with the chin and a brow visible) against the same on 300-W.

    Returns:
        ``bbox_ratio``, ``height_ratio`` and ``height_ratio_<yaw bin>``: medians of AFLW / 300-W (1 = same scale,
        < 1 = the AFLW crop is tighter); ``centre_offset_x`` / ``_y``: median signed offset of the visible points'
        bounding-box centre from the crop centre, and ``centre_scatter`` the median distance, as fractions of the
        crop side.
    """
    w300 = load_300w(root)
    ext = np.stack([r.landmarks for r in w300]).astype(np.float64)
    side300 = np.array([r.box[2] - r.box[0] for r in w300])
    sub300 = ext[:, list(AFLW21_TO_EXTENDED)]
    folder = _source_dir(root, "aflw-crops", "landmarks.npz")
    with np.load(folder / "landmarks.npz") as d:
        pts, vis, bins = d["pts21"].astype(np.float64) - 1.0, d["visible"], d["yaw_bin"]
    ratios, offsets = [], []
    for p, v in zip(pts, vis, strict=True):
        if v.sum() < 4:
            continue
        q = p[v]
        ratios.append(AFLW_CROP_SIZE / np.ptp(q, 0).max() / np.median(side300 / np.ptp(sub300[:, v], axis=1).max(1)))
        offsets.append((0.5 * (q.min(0) + q.max(0)) - (AFLW_CROP_SIZE - 1) / 2) / AFLW_CROP_SIZE)
    ok = vis[:, 20] & vis[:, :6].any(1)
    h_aflw = pts[:, 20, 1] - np.where(vis[:, :6], pts[:, :6, 1], np.inf).min(1)
    r_aflw = AFLW_CROP_SIZE / np.where(ok, h_aflw, np.nan)
    r_300 = np.median(side300 / (sub300[:, 20, 1] - sub300[:, :6, 1].min(1)))
    offsets = np.array(offsets)
    out = {"bbox_ratio": float(np.median(ratios)), "height_ratio": float(np.nanmedian(r_aflw) / r_300),
           "centre_offset_x": float(np.median(offsets[:, 0])), "centre_offset_y": float(np.median(offsets[:, 1])),
           "centre_scatter": float(np.median(np.linalg.norm(offsets, axis=1)))}
    for b in AFLW_YAW_BINS:
        out[f"height_ratio_{b}"] = float(np.nanmedian(r_aflw[bins == b]) / r_300)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Dataset


def scale_box(box: np.ndarray, factor: float) -> np.ndarray:
    """``[x0, y0, x1, y1]`` box scaled by ``factor`` about its centre (a new float64 array; the input is unchanged)."""
    b = np.asarray(box, dtype=np.float64)
    centre, half = 0.5 * (b[:2] + b[2:]), 0.5 * (b[2:] - b[:2]) * float(factor)
    return np.concatenate([centre - half, centre + half])


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Raises:
        FileNotFoundError: the file is missing or unreadable.
    """
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class RealFaceDataset(Dataset):
    """Face crops of real photos with extended-layout landmark targets.

    ``__getitem__`` returns a dict: ``image`` (3, S, S) float32 RGB in [0, 1]; ``landmarks`` (71, 2) float32 crop
    pixels (0-based centres); ``weights`` (71,) float32; ``source`` (int, :data:`SOURCE_IDS`); ``index`` (int);
    ``yaw`` (float degrees, NaN if unknown; negated by a horizontal flip); ``has_landmarks`` (bool); ``race`` (int,
    UTKFace race code or -1); ``depth`` (71,) float32 relative point depth in crop pixels and ``depth_weights`` (71,)
    (1 where the record has pseudo-label depth for that point, else 0).

    Records carry boxes under the canonical crop rule (side :data:`CANONICAL_CROP_SCALE` x the face's); a model with
    another ``crop_scale`` sees every box scaled about its centre by ``crop_scale / CANONICAL_CROP_SCALE``
    (:func:`scale_box`), as the inference crop would be. Without augmentation the crop is
    :func:`facerecon.inference.crop.crop_face` of that box (exactly the inference crop) and the sample is
    deterministic. With augmentation the random state of item ``i`` is
    ``numpy.random.default_rng([seed, epoch, i])``: reproducible, different per epoch (:meth:`set_epoch`, call it before
    building the epoch's iterator; with ``persistent_workers`` the workers keep their own copy) and per item, so
    loader workers never repeat each other.
    """

    def __init__(self, records: Sequence[FaceSample], size: int = 128, augment: bool | Augmenter = False,
                 split: str = "train", seed: int = 0, crop_scale: float = CANONICAL_CROP_SCALE) -> None:
        """Create the dataset.

        Args:
            records: face records (e.g. one split of :func:`make_splits`), any mix of sources.
            size: crop side S in pixels.
            augment: True for the default :class:`training.augment.Augmenter`, or an augmenter instance (whose
                ``crop_scale`` must match).
            split: name of the split (informational; used in ``repr`` and logs).
            seed: base seed of the augmentation.
            crop_scale: the model's crop side over the face's (``FaceReconConfig.crop_scale``).
        """
        from training.augment import Augmenter

        if size < 8:
            raise ValueError(f"crop size must be >= 8 pixels, got {size}")
        check_crop_scale(crop_scale)
        for r in records:
            if FORBIDDEN_DIR in Path(r.image_path).parts:
                raise ValueError(f"record {r.key} points into {FORBIDDEN_DIR}, the validation benchmark")
        self.records = list(records)
        self.size = int(size)
        self.split = split
        self.seed = int(seed)
        self.epoch = 0
        self.crop_scale = float(crop_scale)
        if augment is True:
            augment = Augmenter(self.size, crop_scale=self.crop_scale)
        elif augment is False or augment is None:
            augment = None
        elif not isinstance(augment, Augmenter):
            raise TypeError(f"augment must be a bool or an Augmenter, got {type(augment).__name__}")
        elif augment.size != self.size:
            raise ValueError(f"augmenter size {augment.size} != dataset size {self.size}")
        elif augment.crop_scale != self.crop_scale:
            raise ValueError(f"augmenter crop_scale {augment.crop_scale} != dataset crop_scale {self.crop_scale}")
        self.augmenter: Augmenter | None = augment

    @classmethod
    def from_split(cls, split: str, sources: Iterable[str] = SOURCES, size: int = 128,
                   augment: bool | Augmenter | None = None, seed: int = 0, split_seed: int = 0,
                   root: str | os.PathLike | None = None, crop_scale: float = CANONICAL_CROP_SCALE) -> RealFaceDataset:
        """Dataset of one split of :func:`make_splits` (augmented by default only for "train")."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
        recs = make_splits(seed=split_seed, sources=sources, root=root)[split]
        return cls(recs, size=size, augment=(split == "train") if augment is None else augment, split=split, seed=seed,
                   crop_scale=crop_scale)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        n = Counter(r.source for r in self.records)
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, sources={dict(n)}, size={self.size}, "
                f"crop_scale={self.crop_scale}, augment={self.augmenter is not None})")

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} samples")
        from facerecon.inference.crop import crop_face

        rec = self.records[index]
        image = read_rgb(rec.image_path)
        yaw = rec.yaw
        box = scale_box(rec.box, self.crop_scale / CANONICAL_CROP_SCALE)
        if self.augmenter is None:
            crop = crop_face(image, box, self.size)
            b = box
            scale = np.array([self.size / (b[2] - b[0]), self.size / (b[3] - b[1])])
            lmk = (rec.landmarks - b[:2]) * scale - 0.5  # image_to_crop
            weights = rec.weights
            depth_scale, flipped = float(np.sqrt(scale.prod())), False
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            res = self.augmenter(image, box, rec.landmarks, rec.weights, rng)
            crop, lmk, weights = res.image, res.landmarks, res.weights
            depth_scale, flipped = float(np.sqrt(abs(np.linalg.det(res.matrix[:, :2])))), res.flipped
            if res.flipped:
                yaw = -yaw
            if abs(res.angle_deg) > self.augmenter.config.rotation_deg:
                # An in-plane turn multiplies R = Rx(pitch) Ry(yaw) Rz(roll) from the left, so the Euler yaw of a
                # pitched face moves with it; a labelled yaw is kept only within the usual small turns.
                yaw = math.nan
        lmk = np.where(weights[:, None] > 0, lmk, 0.0)
        depth = np.zeros(N_LANDMARKS, dtype=np.float32)
        depth_w = np.zeros(N_LANDMARKS, dtype=np.float32)
        if rec.depth is not None:
            # In-plane similarity warps scale depth like x and y; a mirror permutes the points but keeps depth.
            depth = (rec.depth[list(EXTENDED_MIRROR)] if flipped else rec.depth) * np.float32(depth_scale)
            depth_w = np.isfinite(depth).astype(np.float32)  # NaN: no depth target at that point
            depth = np.where(depth_w > 0, depth, 0.0).astype(np.float32)
        return {
            # numpy, not torch ops: torch's intra-op threads cost milliseconds per small tensor on a busy CPU.
            "image": torch.from_numpy(crop.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)),
            "landmarks": torch.from_numpy(lmk.astype(np.float32)),
            "weights": torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)),
            "depth": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)),
            "depth_weights": torch.from_numpy(depth_w),
            "source": SOURCE_IDS[rec.source],
            "index": index,
            "yaw": float(yaw),
            "has_landmarks": rec.has_landmarks,
            "race": rec.race,
        }
