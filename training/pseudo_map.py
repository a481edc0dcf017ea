"""Fit the MediaPipe -> iBUG 68 correspondence of the pseudo-labels to the 300-W training annotations.

``training/pseudo_label.py`` maps MediaPipe's 478 points to the iBUG layout with the commonly used fixed
correspondence (one or two MediaPipe points per iBUG point). On 300-W that correspondence is biased: its jaw points
sit 3-8 % of the face size above the annotated ones. This module fits, for every iBUG point, a convex combination of
the ``k`` MediaPipe points nearest to it (non-negative weights summing to one, so the point stays attached to the
MediaPipe surface and follows it on turned faces) by least squares on the near-frontal faces (``|yaw| <= 30``,
where the annotated outline is also the 3D contour) of the 300-W *training* split, and reports the error on the
validation split before and after (one line)::

    python -m training.pseudo_map --labels ~/.cache/facerecon/pseudo/300w_mediapipe.npz
        --out training/assets/mediapipe_to_ibug68.json

The JSON (committed: 68 lists of MediaPipe indices and weights, no data) is used by ``training.data`` through the
``pseudo_map`` training option, which recomputes the pseudo-labels from the stored MediaPipe points.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("facerecon.pseudo_map")

N_MEDIAPIPE = 478
#: Face-size-normalised groups for the report.
GROUPS: dict[str, tuple[int, int]] = {"jaw": (0, 17), "brows": (17, 27), "nose": (27, 36), "eyes": (36, 48),
                                      "mouth": (48, 68)}
DEFAULT_MAP = Path(__file__).resolve().parent / "assets" / "mediapipe_to_ibug68.json"


def load_map(path: str | Path) -> list[list[tuple[int, float]]]:
    """Read a correspondence JSON: 68 lists of ``(mediapipe_index, weight)``; weights of a point sum to 1."""
    data = json.loads(Path(path).read_text())
    points = data["points"] if isinstance(data, dict) else data
    if len(points) != 68:
        raise ValueError(f"{path}: expected 68 points, got {len(points)}")
    out = []
    for j, entry in enumerate(points):
        pairs = [(int(i), float(w)) for i, w in entry]
        if not pairs or any(not 0 <= i < N_MEDIAPIPE for i, _ in pairs) or abs(sum(w for _, w in pairs) - 1) > 1e-4:
            raise ValueError(f"{path}: point {j} must have MediaPipe indices in [0, 478) with weights summing to 1")
        out.append(pairs)
    return out


def map_matrix(mapping: list[list[tuple[int, float]]]) -> np.ndarray:
    """(68, 478) weight matrix of a correspondence."""
    m = np.zeros((68, N_MEDIAPIPE))
    for j, pairs in enumerate(mapping):
        for i, w in pairs:
            m[j, i] += w
    return m


def apply_map(mesh: np.ndarray, mapping: list[list[tuple[int, float]]] | np.ndarray) -> np.ndarray:
    """(N, 478, D) MediaPipe points -> (N, 68, D) iBUG-layout points (NaN rows stay NaN)."""
    m = mapping if isinstance(mapping, np.ndarray) else map_matrix(mapping)
    return np.einsum("ji,nid->njd", m, np.asarray(mesh, dtype=np.float64))


def fixed_map() -> list[list[tuple[int, float]]]:
    """The fixed correspondence of ``training/pseudo_label.py`` as a mapping."""
    from training.pseudo_label import MEDIAPIPE_TO_IBUG68

    return [[(i, 1.0 / len(idx)) for i in idx] for idx in MEDIAPIPE_TO_IBUG68]


def _face_sizes(points: np.ndarray) -> np.ndarray:
    ext = points.max(1) - points.min(1)
    return np.sqrt(ext[:, 0] * ext[:, 1])


def point_errors(mesh: np.ndarray, target: np.ndarray, mapping: Any) -> np.ndarray:
    """(N, 68) point errors of the mapped MediaPipe points against targets, / sqrt(w h) of the targets' box."""
    pred = apply_map(mesh[..., :2], mapping)
    return np.linalg.norm(pred - target, axis=-1) / _face_sizes(target)[:, None]


def fit_map(mesh: np.ndarray, target: np.ndarray, k: int = 6) -> list[list[tuple[int, float]]]:
    """Fit each iBUG point as a convex combination of its ``k`` nearest MediaPipe points.

    Args:
        mesh: (N, 478, >=2) MediaPipe points of N faces (pixels).
        target: (N, 68, 2) annotated iBUG points of the same faces.
        k: candidate MediaPipe points per iBUG point (nearest on average, in face-size units).

    Returns:
        68 lists of ``(index, weight)`` with non-negative weights summing to 1 (zero weights dropped).
    """
    from scipy.optimize import nnls

    xy = np.asarray(mesh[..., :2], dtype=np.float64)
    size = _face_sizes(target)[:, None, None]
    xy_n, tgt_n = xy / size, np.asarray(target, dtype=np.float64) / size
    out = []
    for j in range(68):
        dist = np.linalg.norm(xy_n - tgt_n[:, j : j + 1], axis=-1).mean(0)
        cand = np.argsort(dist)[:k]
        # Rows: x and y residuals of every face, plus a heavily weighted sum-to-one row.
        a = np.concatenate([xy_n[:, cand, 0], xy_n[:, cand, 1]], axis=0)
        b = np.concatenate([tgt_n[:, j, 0], tgt_n[:, j, 1]])
        big = 1e3 * np.sqrt(len(b))
        a = np.vstack([a, np.full((1, len(cand)), big)])
        b = np.append(b, big)
        w, _ = nnls(a, b)
        keep = w > 1e-4 * w.sum()
        w = w[keep] / w[keep].sum()
        out.append([(int(i), float(wi)) for i, wi in zip(cand[keep], w, strict=True)])
    return out


def _report(err: np.ndarray) -> dict[str, float]:
    rep = {name: float(err[:, a:b].mean()) for name, (a, b) in GROUPS.items()}
    rep["all"] = float(err.mean())
    return rep


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point."""
    from training.data import make_splits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=Path, required=True, help="300-W pseudo-labels of training/pseudo_label.py")
    p.add_argument("--out", type=Path, default=DEFAULT_MAP)
    p.add_argument("--k", type=int, default=6, help="candidate MediaPipe points per iBUG point")
    p.add_argument("--max-yaw", type=float, default=30.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with np.load(args.labels) as d:
        if "mesh" not in d:
            raise ValueError(f"{args.labels} has no 'mesh' array: re-run training/pseudo_label.py")
        index = {str(n): i for i, n in enumerate(d["names"])}
        mesh, found = d["mesh"].astype(np.float64), d["found"]
    splits = make_splits(seed=0, sources=["300w"])
    sets = {}
    for split in ("train", "val"):
        rows, tgts = [], []
        for r in splits[split]:
            i = index.get(r.name)
            if i is not None and found[i] and abs(r.yaw_estimate) <= args.max_yaw:
                rows.append(i)
                tgts.append(r.landmarks[:68])
        sets[split] = (mesh[rows], np.asarray(tgts, dtype=np.float64))
    fitted = fit_map(*sets["train"], k=args.k)
    before, after = (_report(point_errors(*sets["val"], m)) for m in (fixed_map(), fitted))
    logger.info("300-W val (%d faces, |yaw| <= %g) NME before %s", len(sets["val"][0]), args.max_yaw,
                {k: round(v, 4) for k, v in before.items()})
    logger.info("after %s", {k: round(v, 4) for k, v in after.items()})
    result = {
        "description": "MediaPipe Face Landmarker (478 points) -> iBUG 68: convex combinations fitted by "
                       "training/pseudo_map.py on 300-W training-split faces with |yaw| <= "
                       f"{args.max_yaw:g} ({len(sets['train'][0])} faces)",
        "val_nme_fixed": before, "val_nme_fitted": after, "n_val": len(sets["val"][0]),
        "points": [[[i, round(w, 6)] for i, w in pairs] for pairs in fitted],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    logger.info("wrote %s", args.out)
    return result


if __name__ == "__main__":
    main()
