"""Face profiling: turned views of frontal training photos with all 68 landmarks (in the manner of 300W-LP).

    python -m training.profile_faces --model facerecon/pretrained/facerecon-default [--views 2] [--out DIR]

AFLW labels only the visible points and 300-W is mostly frontal, so the real training data never shows where the
hidden half of a turned face lies, which is what AFLW2000-3D's 68 points (projected 3D landmarks) ask for. Profiling
makes such examples from real photos: the model reconstructs each near-frontal 300-W *training* face, the mesh gives
the photo a depth map (the face from the rendered mesh, hair / ears / background extrapolated and flattened towards
the head's centre), and the textured height field is turned about the head's vertical axis and re-rendered. The
manual 68 labels get their depth from the mesh's landmark vertices and turn with the scene, so every point keeps a
target, hidden or not; the new yaw (the model's rotation turned by the same angle) is the yaw label, and the turned
depths are relative-depth targets. Uncovered pixels are inpainted.

Only records of the deterministic split's training part are profiled (:func:`profile_split` takes them from
``training.data.make_splits``; ``training.train`` refuses profiled records whose source face is not in its training
split). The generated images are derived from research-only photos: they live in the facerecon cache
(``<cache>/profiled/``), never in the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

logger = logging.getLogger(__name__)

#: The turned views' |yaw| is drawn uniformly from this range (degrees).
TARGET_YAW_RANGE = (30.0, 80.0)
#: Turns are clipped to this many degrees: a height field turned further shows mostly stretched texture.
MAX_TURN = 60.0
#: Source faces: 300-W training faces whose landmark yaw estimate is at most this (degrees), where the labelled jaw
#: outline is close to the 3D jaw contour.
MAX_SOURCE_YAW = 20.0
PROFILE_FORMAT = "facerecon-profiled/1"


def yaw_rotation_camera(angle: float | torch.Tensor) -> torch.Tensor:
    """(3, 3) rotation by ``angle`` radians about the camera frame's y axis (image down).

    Convention: OpenCV camera frame (x right, y down, z away from the camera); a positive angle moves points in
    front of the rotation centre (smaller z) towards -x (the image left).
    """
    a = torch.as_tensor(angle, dtype=torch.float64)
    c, s = torch.cos(a), torch.sin(a)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([torch.stack([c, zero, s]), torch.stack([zero, one, zero]), torch.stack([-s, zero, c])])


def complete_depth(depth: np.ndarray, mask: np.ndarray, back_depth: float, falloff: float) -> np.ndarray:
    """Depth for every pixel: the face's where it is known, extrapolated outward and flattened to ``back_depth``.

    Args:
        depth: (H, W) float depth in pixels (any value where ``mask`` is False).
        mask: (H, W) bool, True where ``depth`` is known (the rendered face).
        back_depth: depth that far-away pixels (background) tend to.
        falloff: distance in pixels over which the extrapolated depth decays towards ``back_depth``.

    Returns:
        (H, W) float32 depth map.
    """
    m = mask.astype(np.float32)
    d = np.where(mask, depth, 0.0).astype(np.float32)
    sigma = max(falloff / 2.0, 1.0)
    num = cv2.GaussianBlur(d, (0, 0), sigma)
    den = cv2.GaussianBlur(m, (0, 0), sigma)
    eps = 1e-3  # where no face pixel is near, the extrapolation tends smoothly to back_depth
    near = (num + eps * back_depth) / (den + eps)
    dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    alpha = np.exp(-dist / falloff)
    out = alpha * near + (1.0 - alpha) * back_depth
    # A soft seam: a few pixels inside the outline blend into the extrapolation, so no depth step remains there.
    seam = max(falloff / 8.0, 1.0)
    inner = cv2.GaussianBlur(cv2.erode(m, np.ones((3, 3), np.uint8), iterations=int(round(seam))), (0, 0), seam)
    return (inner * d + (1.0 - inner) * out).astype(np.float32)


def _grid_faces(height: int, width: int) -> torch.Tensor:
    """(2 (H-1)(W-1), 3) triangles of the pixel grid (vertex index = y * W + x)."""
    idx = torch.arange(height * width).view(height, width)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    return torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([b, d, c], -1).reshape(-1, 3)])


def turn_scene(image: np.ndarray, depth: np.ndarray, points: np.ndarray, rotation: torch.Tensor,
               centre: np.ndarray, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Turn an image's height field (and 3D points) about ``centre`` and re-render it orthographically.

    Args:
        image: (H, W, 3) uint8 RGB.
        depth: (H, W) float depth of every pixel, in pixels (larger = farther).
        points: (K, 3) points (x, y pixels, depth) that turn with the scene.
        rotation: (3, 3) rotation in the camera frame (x right, y down, z away).
        centre: (3,) rotation centre (x, y, depth) in pixels.
        pad: the image and depth are mirror-padded by this many pixels (at least 1) first, so the turned scene
            still covers the frame (the padding's depth is the edge's).

    Returns:
        The re-rendered (H, W, 3) uint8 image (pixels no triangle covers are inpainted) and the (K, 3) turned points.

    Convention: 0-based pixel centres; orthographic projection along z (weak perspective with the scale folded in).
    """
    from facerecon.render import rasterize
    from facerecon.render.renderer import interpolate

    h, w = depth.shape
    pad = max(int(pad), 1)  # the frame's last row and column lie on grid edges that cover no pixel centre
    image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    depth = cv2.copyMakeBorder(depth.astype(np.float32), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    hp, wp = depth.shape
    ys, xs = np.mgrid[0:hp, 0:wp].astype(np.float64) - pad
    grid = np.stack([xs, ys, depth.astype(np.float64)], -1).reshape(-1, 3)
    r = rotation.double().numpy()
    c = np.asarray(centre, dtype=np.float64)
    turned = (grid - c) @ r.T + c
    faces = _grid_faces(hp, wp)
    frags = rasterize(torch.from_numpy(turned).float()[None], faces, h, w)
    colours = torch.from_numpy(image.reshape(1, -1, 3).astype(np.float32))
    out = interpolate(colours, faces, frags)[0].contiguous().numpy()
    covered = frags.mask[0].numpy()
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if not covered.all():
        out = cv2.inpaint(out, (~covered).astype(np.uint8), 3, cv2.INPAINT_TELEA)
    pts = (np.asarray(points, dtype=np.float64) - c) @ r.T + c
    return out, pts


def face_geometry(model: Any, images: Sequence[np.ndarray], boxes: np.ndarray) -> dict[str, torch.Tensor]:
    """The model's reconstruction (flip test) of each face in image pixels (x, y, depth), and its head pose.

    Args:
        model: a :class:`~facerecon.models.facerecon.FaceRecon`.
        images: B (H, W, 3) uint8 RGB photos.
        boxes: (B, 4) square crop boxes (the canonical landmark box).

    Returns:
        ``vertices`` (B, N, 3) and ``landmarks`` (B, 68, 3) in image pixels / pixel depth, ``centre`` (B, 3) the
        model frame's origin (the head's rotation centre) there, ``rotation`` (B, 3, 3) the head rotation
        (model -> view frame).
    """
    from facerecon.geometry import crop_to_image
    from facerecon.inference.crop import crop_face

    size = model.config.input_size
    crops = np.stack([crop_face(img, box, size) for img, box in zip(images, boxes, strict=True)])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        out = model(x, flip_test=True)
    box = torch.from_numpy(np.asarray(boxes, dtype=np.float64)).float()
    # Depth in image pixels: mm -> crop pixels (the weak-perspective scale) -> image pixels (square boxes).
    depth_scale = (out.params.scale * (box[:, 2] - box[:, 0]) / size)[:, None, None]

    def to_image(p: torch.Tensor) -> torch.Tensor:
        xy = crop_to_image(model.project(p, out.params.scale), box, size)
        return torch.cat([xy, depth_scale * p[..., 2:]], -1)

    return {"vertices": to_image(out.vertices), "landmarks": to_image(out.landmarks_3d),
            "centre": to_image(out.params.translation[:, None, :])[:, 0], "rotation": out.params.rotation}


def profile_face(model_faces: torch.Tensor, image: np.ndarray, labels68: np.ndarray, geometry: dict[str, torch.Tensor],
                 index: int, yaw_deg: float) -> dict[str, Any]:
    """One turned view of one face.

    Args:
        model_faces: (F, 3) mesh triangles.
        image: (H, W, 3) uint8 RGB photo.
        labels68: (68, 2) manual landmarks in image pixels.
        geometry: :func:`face_geometry` of a batch containing this face; ``index`` picks it.
        index: the face's row in ``geometry``.
        yaw_deg: the turn in degrees (positive: towards the image left, like a positive yaw label).

    Returns:
        ``image`` (H, W, 3) uint8, ``landmarks`` (68, 2), ``depth`` (68,) pixel depth, ``rotation`` (3, 3) the
        turned head rotation (model -> view frame).
    """
    from facerecon.geometry import matrix_to_euler
    from facerecon.render import rasterize

    h, w = image.shape[:2]
    verts = geometry["vertices"][index : index + 1].float()
    frags = rasterize(verts, model_faces, h, w)
    mask = frags.mask[0].numpy()
    face_depth = frags.depth[0].numpy()
    centre = geometry["centre"][index].double().numpy()
    lmk_depth = geometry["landmarks"][index, :, 2].double().numpy()
    width = float(np.ptp(labels68[:, 0]))
    # Background and hair sit at the depth of the face's outline, so the scene around the face turns without a
    # depth step at the outline (a step would smear a band of background across the uncovered side).
    outline = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    back = float(np.median(face_depth[outline])) if outline.any() else float(centre[2])
    depth = complete_depth(face_depth, mask, back_depth=back, falloff=max(0.5 * width, 4.0))
    # Turning the scene by rc about the model origin turns the head rotation to F rc F R (F = diag(1, -1, -1), the
    # view <-> camera axis flip). Of the two signs, take the one that moves the yaw label by +yaw_deg (the Euler
    # yaw is not additive once the head is pitched or rolled, so this is checked, not assumed).
    rot_view = geometry["rotation"][index].double()
    f = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    best = None
    for sign in (1.0, -1.0):
        rc = yaw_rotation_camera(sign * math.radians(yaw_deg))
        turned_rot = f @ rc @ f @ rot_view
        dyaw = float(matrix_to_euler(turned_rot[None])[0, 0] - matrix_to_euler(rot_view[None])[0, 0])
        err = abs((math.degrees(dyaw) - yaw_deg + 180.0) % 360.0 - 180.0)
        if best is None or err < best[0]:
            best = (err, rc, turned_rot)
    _, rc, turned_rot = best
    points = np.concatenate([labels68.astype(np.float64), lmk_depth[:, None]], 1)
    new_image, new_points = turn_scene(image, depth, points, rc, centre, pad=max(h, w) // 4)
    return {"image": new_image, "landmarks": new_points[:, :2].astype(np.float32),
            "depth": new_points[:, 2].astype(np.float32), "rotation": turned_rot.float()}


def source_records(records: Sequence[Any], max_yaw: float = MAX_SOURCE_YAW) -> list[Any]:
    """The 300-W records with all 68 points labelled and ``|yaw_estimate| <= max_yaw``."""
    return [r for r in records if r.source == "300w" and abs(r.yaw_estimate) <= max_yaw
            and bool((r.weights[:68] > 0).all())]


def profile_records(model: Any, records: Sequence[Any], out_dir: str | Path, views: int = 2, seed: int = 0,
                    batch_size: int = 32, yaw_range: tuple[float, float] = TARGET_YAW_RANGE,
                    max_turn: float = MAX_TURN) -> Path:
    """Write ``views`` turned views of each record to ``out_dir`` (``images/*.jpg`` + ``profiled.npz``).

    Args:
        model: the :class:`~facerecon.models.facerecon.FaceRecon` that reconstructs the faces.
        records: :class:`training.data.FaceSample` faces to profile (see :func:`source_records`).
        out_dir: output folder.
        views: turned views per face.
        seed: seeds the turn angles.
        batch_size: faces per model batch.
        yaw_range: the turned view's |yaw| is drawn uniformly from this range (degrees); its side is random.
        max_turn: the turn (target yaw minus the face's yaw) is clipped to +/- this (degrees).

    Returns:
        Path of the written ``profiled.npz`` (arrays ``names``, ``origin`` (the source record's key), ``group``,
        ``landmarks`` (n, 68, 2), ``depth`` (n, 68), ``yaw`` / ``pitch`` / ``roll`` (n,) degrees of the turned
        rotation, ``turn`` (n,) the applied turn in degrees).
    """
    from facerecon.geometry import matrix_to_euler
    from training.data import read_rgb

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    faces = model.morphable.faces
    rows: dict[str, list[Any]] = {k: [] for k in ("names", "origin", "group", "landmarks", "depth", "yaw", "pitch",
                                                  "roll", "turn")}
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = [read_rgb(r.image_path) for r in chunk]
        geo = face_geometry(model, images, np.stack([r.box for r in chunk]))
        yaw_now = np.degrees(matrix_to_euler(geo["rotation"].double())[:, 0].numpy())
        for i, rec in enumerate(chunk):
            for v in range(views):
                target = rng.uniform(*yaw_range) * rng.choice([-1.0, 1.0])
                turn = float(np.clip(target - yaw_now[i], -max_turn, max_turn))
                res = profile_face(faces, images[i], rec.landmarks[:68], geo, i, turn)
                name = f"{Path(rec.name).stem}_p{v}.jpg"
                cv2.imwrite(str(out_dir / "images" / name), cv2.cvtColor(res["image"], cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
                euler = np.degrees(matrix_to_euler(res["rotation"][None].double())[0].numpy())
                for key, val in (("names", name), ("origin", rec.key), ("group", rec.group),
                                 ("landmarks", res["landmarks"]), ("depth", res["depth"]), ("yaw", euler[0]),
                                 ("pitch", euler[1]), ("roll", euler[2]), ("turn", turn)):
                    rows[key].append(val)
        logger.info("profiled %d / %d faces", min(start + batch_size, len(records)), len(records))
    path = out_dir / "profiled.npz"
    np.savez_compressed(path, format=PROFILE_FORMAT, **{k: np.asarray(v) for k, v in rows.items()})
    return path


def load_profiled(path: str | Path, allowed_origins: set[str] | None = None) -> list[Any]:
    """Training records of a :func:`profile_records` folder (or its ``profiled.npz``).

    Args:
        path: the output folder or its ``profiled.npz``.
        allowed_origins: if given, every record's source face (``"300w/<name>"``) must be in it.

    Returns:
        :class:`training.data.FaceSample` records of source ``"300w"``, stratum ``"profiled"``: all 68 points (+ the
        virtual centres) weighted 1, the turned yaw as the yaw label, the turned depths as depth targets, the
        canonical box of the turned landmarks, and the source face's group.

    Raises:
        FileNotFoundError: no ``profiled.npz`` there.
        ValueError: a record comes from a face outside ``allowed_origins`` (e.g. a validation face).
    """
    from facerecon.geometry import box_from_points
    from training.data import CANONICAL_CROP_SCALE, FaceSample, extend_landmarks_np, pose_bin_label

    path = Path(path)
    npz = path / "profiled.npz" if path.is_dir() else path
    if not npz.is_file():
        raise FileNotFoundError(f"no profiled faces at {npz}: run `python -m training.profile_faces` first")
    with np.load(npz) as d:
        if str(d["format"]) != PROFILE_FORMAT:
            raise ValueError(f"{npz} has format {d['format']!s}, expected {PROFILE_FORMAT}")
        data = {k: d[k] for k in d.files}
    if allowed_origins is not None:
        bad = sorted(set(data["origin"].tolist()) - allowed_origins)
        if bad:
            raise ValueError(f"{npz}: {len(bad)} profiled faces come from faces outside the training split, e.g. "
                             f"{bad[:3]}; regenerate them from this split")
    lmk = data["landmarks"].astype(np.float64)
    ext = extend_landmarks_np(lmk).astype(np.float32)
    depth = extend_landmarks_np(data["depth"][..., None].astype(np.float64))[..., 0].astype(np.float32)
    boxes = box_from_points(torch.from_numpy(lmk), CANONICAL_CROP_SCALE).numpy()
    folder = npz.parent / "images"
    out = []
    for i, name in enumerate(data["names"]):
        yaw = float(data["yaw"][i])
        out.append(FaceSample(
            source="300w", name=f"profiled/{name}", image_path=folder / str(name), box=boxes[i], landmarks=ext[i],
            weights=np.ones(ext.shape[1], dtype=np.float32), yaw=yaw, pose_bin=pose_bin_label(yaw), stratum="profiled",
            group=str(data["group"][i]), meta={"origin": str(data["origin"][i]), "turn": float(data["turn"][i])},
            depth=depth[i],
        ))
    return out


def default_profiled_dir() -> Path:
    """``<facerecon cache>/profiled/300w``."""
    from facerecon.morphable.ict import cache_dir

    return cache_dir() / "profiled" / "300w"


def main(argv: list[str] | None = None) -> int:
    """Profile the near-frontal 300-W faces of the training split (see the module docstring)."""
    from facerecon import DEFAULT_MODEL_DIR
    from facerecon.models.facerecon import FaceRecon
    from training.data import make_splits

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model that reconstructs the faces")
    p.add_argument("--out", default=None, help="output folder (default: <facerecon cache>/profiled/300w)")
    p.add_argument("--views", type=int, default=2, help="turned views per face")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="profile only the first N source faces")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = FaceRecon.from_pretrained(args.model).eval()
    records = source_records(make_splits(seed=0, sources=["300w"])["train"])[: args.limit]
    out = Path(args.out) if args.out else default_profiled_dir()
    path = profile_records(model, records, out, views=args.views, seed=args.seed)
    (out / "profiled.json").write_text(json.dumps({"model": args.model, "faces": len(records), "views": args.views,
                                                   "seed": args.seed, "format": PROFILE_FORMAT}, indent=2))
    sys.stdout.write(f"{len(records)} faces x {args.views} views -> {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
