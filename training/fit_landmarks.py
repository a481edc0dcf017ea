"""Fit the landmark definition: which surface vertex best stands for each iBUG point on annotated photos.

    python -m training.fit_landmarks --model DIR --out facerecon/assets/landmarks/refined.json [--max-yaw 30]
    python -m training.fit_landmarks --model DIR --out OUT.json --jaw-from-ears --radius 45   # ear_anchored_jaw
    python -m training.fit_landmarks --model DIR --out OUT.json --jaw-near-side --radius 30   # near_side_jaw
    python -m training.fit_landmarks --model DIR --out OUT.json --keep-jaw   # frontal fit of points 17-67 only

ICT-FaceKit's 68 landmark vertices do not sit exactly where 300-W / AFLW annotators put the points (e.g. its brow
vertices lie above the annotated brow line), so a model trained on photos bends the shape to bring those vertices to
the annotations, while synthetic faces (exact 3D ground truth) teach the true shape: the two disagree and the
prediction ends up biased. This script takes a trained model's meshes on the training split (no augmentation, faces
with |yaw| <= ``max_yaw``, where a 2D annotation and a fixed surface point agree), and for every landmark picks the
vertex within ``radius`` mm of the current one with the lowest mean normalised distance to the annotation; mirror
pairs are chosen together (vertex ``v`` for point ``i`` and its mirror vertex for the mirrored point), mid-line points
among self-mirrored vertices. The validation split measures the result on faces the choice never saw. The AFLW2000-3D
benchmark is never read.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from typing import Any

import torch

from training.data import JAW_POINTS

logger = logging.getLogger("facerecon.fit_landmarks")


def candidate_vertices(mean: torch.Tensor, landmark_index: torch.Tensor, radius: float) -> torch.Tensor:
    """Vertices within ``radius`` of each landmark vertex, padded with -1.

    Args:
        mean: (N, 3) mean shape (mm).
        landmark_index: (L,) current landmark vertices.
        radius: search radius in mm.

    Returns:
        (L, C) long vertex indices, each row starting with the nearest (the current vertex itself); -1 pads.
    """
    d = torch.cdist(mean[landmark_index], mean)  # (L, N)
    inside = d <= radius
    c = int(inside.sum(1).max())
    order = torch.argsort(torch.where(inside, d, torch.full_like(d, float("inf"))), dim=1)[:, :c]
    return torch.where(torch.gather(inside, 1, order), order, torch.full_like(order, -1))


def accumulate_costs(points_2d: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, norm: torch.Tensor,
                     candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of normalised distances from each candidate vertex to each landmark's annotation over a batch.

    Args:
        points_2d: (B, N, 2) projected vertices (pixels).
        targets: (B, L, 2) annotated points (pixels).
        weights: (B, L) > 0 where annotated.
        norm: (B,) normalisation length per face (pixels).
        candidates: (L, C) vertex indices (-1 = padding).

    Returns:
        ``(sums (L, C), counts (L,))``: summed distance / norm over the annotated faces and their number.
    """
    b, (n_l, n_c) = points_2d.shape[0], candidates.shape
    idx = candidates.clamp_min(0).reshape(-1)
    pts = points_2d.index_select(1, idx).reshape(b, n_l, n_c, 2)
    dist = (pts - targets[:, :, None, :]).norm(dim=-1) / norm[:, None, None]
    vis = (weights > 0).to(dist.dtype)
    return (dist * vis[..., None]).sum(0), vis.sum(0)


def choose_symmetric(mean_cost: torch.Tensor, candidates: torch.Tensor, landmark_mirror: torch.Tensor,
                     vertex_mirror: torch.Tensor) -> torch.Tensor:
    """Pick one vertex per landmark, mirror pairs jointly, mid-line points among self-mirrored vertices.

    Args:
        mean_cost: (L, C) mean cost of each candidate (inf where invalid).
        candidates: (L, C) vertex indices (-1 = padding).
        landmark_mirror: (L,) mirror permutation of the landmarks.
        vertex_mirror: (N,) mirror vertex of each vertex.

    Returns:
        (L,) chosen vertex indices, with ``out[landmark_mirror] == vertex_mirror[out]``.
    """
    n_l = candidates.shape[0]
    cost = torch.where(candidates >= 0, mean_cost, torch.full_like(mean_cost, float("inf")))
    out = torch.full((n_l,), -1, dtype=torch.long)
    for i in range(n_l):
        j = int(landmark_mirror[i])
        if out[i] >= 0:
            continue
        if j == i:
            selfm = (candidates >= 0) & (vertex_mirror[candidates.clamp_min(0)] == candidates)
            c = torch.where(selfm[i], cost[i], torch.full_like(cost[i], float("inf")))
            k = int(torch.argmin(c if torch.isfinite(c).any() else cost[i]))
            out[i] = candidates[i, k]
            continue
        mirrored = vertex_mirror[candidates[i].clamp_min(0)]
        # Cost of the mirrored vertex for landmark j (inf if it is not one of j's candidates).
        match = (candidates[j][None, :] == mirrored[:, None]) & (candidates[j][None, :] >= 0)
        cost_j = torch.where(match, cost[j][None, :], torch.full_like(match, float("inf"), dtype=cost.dtype)).amin(1)
        k = int(torch.argmin(cost[i] + cost_j))
        out[i], out[j] = candidates[i, k], vertex_mirror[candidates[i, k]]
    return out


def _records(split: str, max_yaw: float, sources: list[str], min_yaw: float = -1.0) -> list[Any]:
    from training.data import make_splits

    recs = [r for r in make_splits(seed=0, sources=sources)[split] if r.has_landmarks]
    yaw = [r.yaw if r.source == "aflw" else r.yaw_estimate for r in recs]
    return [r for r, y in zip(recs, yaw, strict=True)
            if y is not None and math.isfinite(y) and min_yaw < abs(y) <= max_yaw]


def _batches(model: Any, records: list[Any], batch_size: int):
    """Yield ``(points_2d (B, N, 2), targets (B, 68, 2), weights (B, 68), norm (B,), rotation (B, 3, 3))``.

    No augmentation; ``rotation`` is the model's predicted head rotation (model frame -> view frame).
    """
    from training.data import RealFaceDataset
    from training.losses import visible_box_size

    ds = RealFaceDataset(records, size=model.config.input_size, augment=False, split="fit")
    for start in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
        x = torch.stack([t["image"] for t in items])
        tgt = torch.stack([t["landmarks"] for t in items])[:, :68]
        w = torch.stack([t["weights"] for t in items])[:, :68]
        with torch.inference_mode():
            out = model(x)
            pts = model.project(out.vertices, out.params.scale)
        yield pts, tgt, w, visible_box_size(tgt, w), out.params.rotation


def _costs(model: Any, records: list[Any], candidates: torch.Tensor, batch_size: int,
           points: torch.Tensor | None = None, side: torch.Tensor | None = None,
           min_turn_deg: float = 0.0) -> torch.Tensor:
    """Mean cost of each candidate over ``records``.

    ``points`` selects the landmarks ``candidates`` has rows for; with ``side`` ((L,) +1 / -1: the model-frame side
    of each of those landmarks) a point counts only on faces that turn that side towards the camera
    (:func:`near_side_mask`).
    """
    sums = torch.zeros(candidates.shape, dtype=torch.float64)
    counts = torch.zeros(candidates.shape[0], dtype=torch.float64)
    for pts, tgt, w, norm, rot in _batches(model, records, batch_size):
        if points is not None:
            tgt, w = tgt[:, points], w[:, points]
        if side is not None:
            w = w * near_side_mask(rot, side, min_turn_deg).to(w.dtype)
        s, c = accumulate_costs(pts, tgt, w, norm, candidates)
        sums += s.double()
        counts += c.double()
    return sums / counts.clamp_min(1)[:, None]


def _nme_of(cost: torch.Tensor, candidates: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Per-landmark mean normalised error of the chosen vertices, (L,)."""
    k = (candidates == chosen[:, None]).float().argmax(1)
    return cost.gather(1, k[:, None])[:, 0]


def _errors_before_after(name: str, cost: torch.Tensor, val_cost: torch.Tensor, candidates: torch.Tensor,
                         before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """Report entries ``{name}_error_{train,val}_{before,after}``: mean error of the old and the new vertices."""
    return {f"{name}_error_{split}_{when}": float(_nme_of(c, candidates, chosen).mean())
            for split, c in (("train", cost), ("val", val_cost)) for when, chosen in (("before", before),
                                                                                     ("after", after))}


def fit_landmarks(model: Any, radius: float = 20.0, max_yaw: float = 30.0, sources: list[str] | None = None,
                  batch_size: int = 64, limit: int = 0, keep_jaw: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Choose the landmark vertices (see the module docstring); returns ``(index (68,), report)``.

    With ``keep_jaw`` the 17 jaw points stay as they are (e.g. as :func:`near_side_jaw` fitted them: a frontal fit
    cannot see their depth) and only points 17-67 move; jaw and non-jaw points mirror among themselves.
    """
    sources = sources or ["300w", "aflw"]
    morph = model.morphable
    current = morph.landmark_index.clone()
    candidates = candidate_vertices(morph.mean, current, radius)
    train, val = _records("train", max_yaw, sources), _records("val", max_yaw, sources)
    if limit:
        train, val = train[:limit], val[:limit]
    logger.info("fitting on %d training faces (|yaw| <= %g), checking on %d validation faces", len(train), max_yaw,
                len(val))
    cost = _costs(model, train, candidates, batch_size)
    chosen = choose_symmetric(cost.float(), candidates, morph.landmark_mirror, morph.vertex_mirror)
    if keep_jaw:
        chosen = torch.cat([current[JAW_POINTS], chosen[JAW_POINTS.stop:]])
    val_cost = _costs(model, val, candidates, batch_size)
    moved = (morph.mean[chosen] - morph.mean[current]).norm(dim=-1)
    report = {
        "method": "frontal_keep_jaw" if keep_jaw else "frontal", "train_faces": len(train), "val_faces": len(val),
        "max_yaw_deg": max_yaw, "radius_mm": radius, "sources": sources,
        "train_point_error_before": float(_nme_of(cost, candidates, current).mean()),
        "train_point_error_after": float(_nme_of(cost, candidates, chosen).mean()),
        "val_point_error_before": float(_nme_of(val_cost, candidates, current).mean()),
        "val_point_error_after": float(_nme_of(val_cost, candidates, chosen).mean()),
        "moved_mm": {"mean": float(moved.mean()), "max": float(moved.max())},
        "per_point_val_before": [round(float(v), 5) for v in _nme_of(val_cost, candidates, current)],
        "per_point_val_after": [round(float(v), 5) for v in _nme_of(val_cost, candidates, chosen)],
    }
    return chosen, report


#: iBUG jaw points that 3DDFA maps AFLW's ear lobes to (see :data:`training.data.AFLW21_TO_EXTENDED`), and the chin.
EAR_POINTS, CHIN_POINT = (2, 14), 8


def jaw_depth_taper(i: int) -> float:
    """Share of the ear points' depth shift given to jaw point ``i``: 1 from the ears up, linear to 0 at the chin."""
    return min(1.0, abs(i - CHIN_POINT) / 4.0)


def ear_anchored_jaw(model: Any, radius: float = 45.0, min_yaw: float = 30.0, max_yaw: float = 90.0,
                     batch_size: int = 64, limit: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Move the jaw landmarks back in depth to where AFLW's ear-lobe annotations put jaw points 2 / 14.

    On a frontal face a 2D annotation cannot tell how deep a jaw point lies (every vertex along the line of sight
    projects to the same place), so :func:`fit_landmarks` leaves ICT-FaceKit's jaw on the frontal silhouette. Turned
    faces can: AFLW labels the ear lobes, which 3DDFA (whose fits define AFLW2000-3D's 68 points) maps to jaw points
    2 / 14. This picks the mirror-symmetric vertex pair within ``radius`` mm of points 2 / 14 that best matches the
    ear labels of the AFLW *training* crops with ``min_yaw < |yaw| <= max_yaw`` (ears visible, depth observable), and
    shifts the whole jaw contour back by the same depth, tapering linearly to zero at the chin (whose own AFLW
    label pins it, :func:`jaw_depth_taper`): each point becomes the surface vertex nearest to its shifted position.

    Returns:
        ``(index (68,), report)``; the report has the ear points' mean normalised error on the training and
        validation crops before and after, the depth shift and the distance each jaw point moved.
    """
    morph = model.morphable
    current = morph.landmark_index.clone()
    train, val = (_records(s, max_yaw, ["aflw"], min_yaw) for s in ("train", "val"))
    if limit:
        train, val = train[:limit], val[:limit]
    logger.info("ear fit on %d training crops (%g < |yaw| <= %g), checking on %d validation crops", len(train),
                min_yaw, max_yaw, len(val))
    ears = torch.tensor(EAR_POINTS)
    cand = candidate_vertices(morph.mean, current[ears], radius)
    pair_mirror = torch.tensor([1, 0])
    cost = _costs(model, train, cand, batch_size, ears)
    chosen_ears = choose_symmetric(cost.float(), cand, pair_mirror, morph.vertex_mirror)
    dz = float((morph.mean[chosen_ears, 2] - morph.mean[current[ears], 2]).mean())
    mean = morph.mean
    index = current.clone()
    for i in range(CHIN_POINT):
        target = mean[current[i]] + torch.tensor([0.0, 0.0, jaw_depth_taper(i) * dz])
        side = mean[:, 0] * mean[current[i], 0] > 0  # the same half of the face
        d = torch.where(side, (mean - target).norm(dim=1), torch.full_like(mean[:, 0], float("inf")))
        index[i] = int(d.argmin())
        index[16 - i] = morph.vertex_mirror[index[i]]
    index[ears] = chosen_ears  # a mirror pair (choose_symmetric)
    val_cost = _costs(model, val, cand, batch_size, ears)
    moved = (mean[index] - mean[current]).norm(dim=-1)
    report = {
        "method": "ear_anchored_jaw", "train_faces": len(train), "val_faces": len(val), "min_yaw_deg": min_yaw,
        "max_yaw_deg": max_yaw, "radius_mm": radius, "depth_shift_mm": dz,
        **_errors_before_after("ear", cost, val_cost, cand, current[ears], chosen_ears),
        "jaw_moved_mm": [round(float(v), 2) for v in moved[JAW_POINTS]],
    }
    return index, report


def near_side_mask(rotation: torch.Tensor, side: torch.Tensor, min_turn_deg: float) -> torch.Tensor:
    """Which side points face the camera: the side's outward axis turned at least ``min_turn_deg`` towards it.

    Args:
        rotation: (B, 3, 3) head rotations, model frame -> view frame.
        side: (L,) +1 for points on the model's +x half (subject's left), -1 for the -x half.
        min_turn_deg: how far the side's outward direction ``side * x`` must point towards the viewer.

    Returns:
        (B, L) bool, True where ``(R @ (side, 0, 0))_z > sin(min_turn_deg)``.

    Convention: view frame +x subject's left, +y up, +z towards the viewer; degrees.
    """
    toward = rotation[:, 2, 0][:, None] * side[None, :].to(rotation.dtype)  # z of the rotated +-x axis
    return toward > math.sin(math.radians(min_turn_deg))


#: Jaw points fitted by :func:`near_side_jaw`: the contour without the chin.
JAW_SIDE_POINTS = tuple(i for i in range(JAW_POINTS.stop) if i != CHIN_POINT)


def near_side_jaw(model: Any, radius: float = 30.0, min_yaw: float = 15.0, max_yaw: float = 60.0,
                  min_turn_deg: float = 15.0, keep_ears: bool = True, batch_size: int = 64,
                  limit: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit the depth of the jaw contour on the side of turned faces that faces the camera.

    A frontal 2D jaw annotation fixes a jaw point's height and width but not its depth, and on the far side of a
    turned face annotators follow the cheek silhouette, which no fixed vertex follows. On the *near* side the
    annotated jaw line is the mandible's edge itself, seen obliquely, so it does show how deep the contour lies.
    This picks, for every jaw point but the chin, the vertex within ``radius`` mm of the current one that best
    matches the 300-W annotations of training faces (``min_yaw < |yaw| <= max_yaw``) on which that point's side is
    turned at least ``min_turn_deg`` towards the camera (:func:`near_side_mask`, from the model's predicted pose);
    mirror pairs are chosen together (each side of the pair is observed on faces turned the other way). With
    ``keep_ears`` the ear points 2 / 14, which :func:`ear_anchored_jaw` fits to AFLW's ear-lobe labels (the
    benchmark's own convention), stay as they are.

    Returns:
        ``(index (68,), report)``; the report has the near-side jaw error (mean normalised distance) on the
        training and validation faces before and after, per point on the validation faces, and the distance each
        point moved.
    """
    morph = model.morphable
    current = morph.landmark_index.clone()
    fitted = [i for i in JAW_SIDE_POINTS if not (keep_ears and i in EAR_POINTS)]
    pts = torch.tensor(fitted)
    side = torch.sign(morph.mean[current[pts], 0])
    if (side == 0).any():
        raise ValueError("a jaw side point lies on the mid-line of the current landmark definition")
    pos = {p: k for k, p in enumerate(fitted)}
    mirror = torch.tensor([pos[16 - p] for p in fitted])
    train, val = (_records(s, max_yaw, ["300w"], min_yaw) for s in ("train", "val"))
    if limit:
        train, val = train[:limit], val[:limit]
    logger.info("near-side jaw fit on %d training faces (%g < |yaw| <= %g), checking on %d validation faces",
                len(train), min_yaw, max_yaw, len(val))
    cand = candidate_vertices(morph.mean, current[pts], radius)
    cost = _costs(model, train, cand, batch_size, pts, side, min_turn_deg)
    chosen = choose_symmetric(cost.float(), cand, mirror, morph.vertex_mirror)
    val_cost = _costs(model, val, cand, batch_size, pts, side, min_turn_deg)
    index = current.clone()
    index[pts] = chosen
    moved = (morph.mean[index] - morph.mean[current]).norm(dim=-1)
    report = {
        "method": "near_side_jaw", "train_faces": len(train), "val_faces": len(val), "min_yaw_deg": min_yaw,
        "max_yaw_deg": max_yaw, "min_turn_deg": min_turn_deg, "radius_mm": radius, "points": fitted,
        **_errors_before_after("jaw", cost, val_cost, cand, current[pts], chosen),
        "per_point_val_before": [round(float(v), 5) for v in _nme_of(val_cost, cand, current[pts])],
        "per_point_val_after": [round(float(v), 5) for v in _nme_of(val_cost, cand, chosen)],
        "jaw_moved_mm": [round(float(v), 2) for v in moved[JAW_POINTS]],
        "depth_shift_mm": [round(float(v), 2) for v in (morph.mean[index, 2] - morph.mean[current, 2])[JAW_POINTS]],
    }
    return index, report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point."""
    from facerecon.models.facerecon import FaceRecon
    from facerecon.morphable.landmarks import save_landmark_index

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="trained model folder or repo id")
    p.add_argument("--out", required=True, help="landmark definition JSON to write")
    p.add_argument("--radius", type=float, default=20.0, help="search radius around each current vertex (mm)")
    p.add_argument("--max-yaw", type=float, default=None,
                   help="use faces with |yaw| up to this (degrees; default 30, or 90 with --jaw-from-ears)")
    p.add_argument("--min-yaw", type=float, default=None,
                   help="with --jaw-from-ears / --jaw-near-side: faces with |yaw| above this (default 30 / 15)")
    jaw = p.add_mutually_exclusive_group()
    jaw.add_argument("--jaw-from-ears", action="store_true",
                     help="keep the other points and move the jaw back in depth to the ear labels (ear_anchored_jaw)")
    jaw.add_argument("--jaw-near-side", action="store_true",
                     help="keep the other points and fit the jaw on the near side of turned 300-W faces "
                          "(near_side_jaw)")
    jaw.add_argument("--keep-jaw", action="store_true",
                     help="frontal fit of points 17-67 only; the jaw keeps its current (e.g. near-side) vertices")
    p.add_argument("--min-turn", type=float, default=15.0,
                   help="with --jaw-near-side: how far (deg) a side must face the camera for its points to count")
    p.add_argument("--sources", nargs="+", default=["300w", "aflw"])
    p.add_argument("--limit", type=int, default=0, help="at most this many faces per split (0 = all)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = FaceRecon.from_pretrained(args.model).eval()
    m = model.morphable
    if args.jaw_from_ears:
        index, report = ear_anchored_jaw(model, radius=args.radius,
                                         min_yaw=30.0 if args.min_yaw is None else args.min_yaw,
                                         max_yaw=90.0 if args.max_yaw is None else args.max_yaw, limit=args.limit)
    elif args.jaw_near_side:
        index, report = near_side_jaw(model, radius=args.radius,
                                      min_yaw=15.0 if args.min_yaw is None else args.min_yaw,
                                      max_yaw=60.0 if args.max_yaw is None else args.max_yaw,
                                      min_turn_deg=args.min_turn, limit=args.limit)
    else:
        index, report = fit_landmarks(model, args.radius, 30.0 if args.max_yaw is None else args.max_yaw,
                                      args.sources, limit=args.limit, keep_jaw=args.keep_jaw)
    report["fitted_with"] = str(args.model)
    save_landmark_index(args.out, index, m.surface, m.faces, m.n_vertices, report)
    if args.jaw_from_ears or args.jaw_near_side:
        print(json.dumps(report, indent=1))
        return report
    logger.info("mean point error / face size: train %.4f -> %.4f, val %.4f -> %.4f; moved %.1f mm on average",
                report["train_point_error_before"], report["train_point_error_after"],
                report["val_point_error_before"], report["val_point_error_after"], report["moved_mm"]["mean"])
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("per_point")}, indent=1))
    return report

if __name__ == "__main__":
    main()
