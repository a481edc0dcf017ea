"""Loss terms of the paper: L_total = L_recon + alpha L_perceptual + beta L_reg + landmark + photometric.

Every function is a pure, batched tensor function returning a scalar; :func:`total_loss` combines them with the
weights of :class:`training.config.LossWeights` and returns the named parts for logging.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from facerecon.geometry import matrix_to_euler, procrustes_rotation
from facerecon.models.facerecon import FaceReconOutput
from training.config import LANDMARK_NORMS, LossWeights

#: Extended-layout (71 points) indices of the eyes (36-47 + eye centres) and the mouth (48-67 + mouth centre).
EYE_POINTS = (*range(36, 48), 68, 69)
MOUTH_POINTS = (*range(48, 68), 70)


def point_weights(n_points: int, eye_weight: float, mouth_weight: float, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(P,) per-point importance: eyes and mouth weighted up (P = 71, the extended layout)."""
    w = torch.ones(n_points, device=device, dtype=dtype)
    w[list(EYE_POINTS)] = eye_weight
    w[list(MOUTH_POINTS)] = mouth_weight
    return w


def visible_box_size(target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B,) sqrt(w * h) of the bounding box of the visible (weight > 0) points of (B, P, 2) targets."""
    vis = (weights > 0)[..., None]
    big = torch.finfo(target.dtype).max
    lo = torch.where(vis, target, torch.full_like(target, big)).amin(1)
    hi = torch.where(vis, target, torch.full_like(target, -big)).amax(1)
    return ((hi - lo).clamp_min(1e-3).prod(-1)).sqrt()


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, crop_size: int,
                  importance: torch.Tensor | None = None, norm: str = "crop") -> torch.Tensor:
    """Weighted mean Euclidean landmark error.

    Args:
        pred: (B, P, 2) predicted landmarks in crop pixels.
        target: (B, P, 2) target landmarks in crop pixels (any value where the weight is 0).
        weights: (B, P) visibility / confidence weights (0 = no target).
        crop_size: crop side S in pixels.
        importance: optional (P,) per-point importance (e.g. from :func:`point_weights`).
        norm: ``"crop"``: the weighted mean over all the batch's points, as a fraction of the crop side. ``"face"``:
            shaped like the NME that evaluation reports: each face's weighted mean error divided by sqrt(w * h) of
            its targets' box (:func:`visible_box_size`), averaged over the faces that have targets; turned faces,
            whose box is narrow, weigh more than in ``"crop"``.

    Returns:
        Scalar loss; 0 (with a graph) when no point has a target.

    Convention: 0-based pixel centres.
    """
    if norm not in LANDMARK_NORMS:
        raise ValueError(f"norm must be one of {LANDMARK_NORMS}, got {norm!r}")
    w = weights if importance is None else weights * importance
    target = torch.where(w[..., None] > 0, target, pred.detach())  # NaN-safe for missing points
    dist = torch.sqrt(((pred - target) ** 2).sum(-1) + 1e-8)
    if norm == "crop":
        return (dist / crop_size * w).sum() / w.sum().clamp_min(1e-6)
    has = w.sum(1) > 0
    per_face = (dist * w).sum(1) / w.sum(1).clamp_min(1e-6) / visible_box_size(target, w)
    return (per_face * has).sum() / has.sum().clamp_min(1)


def vertex_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_recon: mean per-vertex Euclidean distance in mm between predicted and ground-truth vertices.

    Args:
        pred: (B, N, 3) predicted vertices (mm).
        target: (B, N, 3) ground truth (mm).
        mask: optional (B,) bool: which samples have 3D ground truth.
    """
    dist = (pred - target).norm(dim=-1).mean(-1)
    if mask is None:
        return dist.mean()
    m = mask.to(dist.dtype)
    return (dist * m).sum() / m.sum().clamp_min(1.0)


def pose_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Chordal rotation distance ``||R_pred - R_gt||_F`` averaged over the samples with ground truth.

    Args:
        pred: (B, 3, 3) predicted rotations.
        target: (B, 3, 3) ground-truth rotations.
        mask: optional (B,) bool, True where ``target`` is known.

    Returns:
        Scalar (0 when no sample has ground truth). ``2 sqrt(2) sin(theta / 2)`` for a rotation error of theta.
    """
    d = (pred - target).flatten(1).norm(dim=1)
    if mask is None:
        return d.mean()
    m = mask.to(d.dtype)
    return (d * m).sum() / m.sum().clamp_min(1.0)


def depth_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Scale-free relative depth loss of landmarks against pseudo-label depth.

    Both depth profiles are centred (weighted mean over each face's points); the target is scaled by the
    least-squares factor ``a = <p, t> / <t, t>`` computed from the detached prediction, so the loss is the weighted
    mean of ``|p - a t|``: it penalises only the part of the predicted profile that is not proportional to the
    target (a wrong pitch or depth pattern), not the pseudo-labeller's depth scale, and it cannot be lowered by
    shrinking the prediction.

    Args:
        pred: (B, P) predicted depth of the points in crop pixels (scale x camera-frame z).
        target: (B, P) target relative depth (any offset and scale; larger = farther).
        weights: (B, P) 1 where a target exists (rows of zeros: no target).
        crop_size: crop side S in pixels.

    Returns:
        Scalar (0 with a graph when no face has depth targets). Convention: distances divided by S.
    """
    w = weights.to(pred.dtype)
    n = w.sum(1, keepdim=True).clamp_min(1e-6)
    target = torch.where(w > 0, target, torch.zeros_like(target))
    p = pred - (pred * w).sum(1, keepdim=True) / n
    t = target - (target * w).sum(1, keepdim=True) / n
    a = (p.detach() * t * w).sum(1, keepdim=True) / (t * t * w).sum(1, keepdim=True).clamp_min(1e-6)
    dist = (p - a * t).abs() / crop_size
    return (dist * w).sum() / w.sum().clamp_min(1e-6)


#: iBUG-68 points whose pseudo-label 3D positions define the pseudo pose (the 51 inner points: brows, eyes, nose,
#: mouth). The jaw is left out: MediaPipe's face oval is not the 3D contour the landmark definition follows.
PSEUDO_POSE_POINTS = slice(17, 68)


def pseudo_rotation(landmarks: torch.Tensor, depth: torch.Tensor, weights: torch.Tensor,
                    reference: torch.Tensor) -> torch.Tensor:
    """Head rotation implied by pseudo-label 3D points: similarity Procrustes of the model's mean landmarks to them.

    Args:
        landmarks: (B, P, 2) target points in crop pixels (x right, y down); the first 68 in iBUG order.
        depth: (B, P) their relative depth in the same pixels (larger = farther).
        weights: (B, P) > 0 where a point has both a 2D target and a depth.
        reference: (68, 3) or (B, 68, 3) mean-face landmarks in the model frame (mm).

    Returns:
        (B, 3, 3) rotation ``R`` in the model's convention (``X_cam = F R X + t``, ``F = diag(1, -1, -1)``) fitted on
        :data:`PSEUDO_POSE_POINTS`. Convention: the camera frame of :mod:`facerecon.geometry` (OpenCV axes).
    """
    pts = PSEUDO_POSE_POINTS
    target = torch.cat([landmarks[:, pts], depth[:, pts, None]], dim=-1).to(reference.dtype)
    source = reference[..., pts, :].expand_as(target)
    r_cam = procrustes_rotation(source, target, (weights[:, pts] > 0).to(reference.dtype))
    flip = r_cam.new_tensor([1.0, -1.0, -1.0])
    return flip[:, None] * r_cam


def pseudo_pose_loss(rotation: torch.Tensor, landmarks: torch.Tensor, depth: torch.Tensor, weights: torch.Tensor,
                     reference: torch.Tensor, min_points: int = 30) -> torch.Tensor:
    """Chordal distance of the predicted rotation to the rotation of the pseudo-label 3D points.

    The target (:func:`pseudo_rotation`, no gradient) is the rotation of the rigid fit of the model's mean face to
    the pseudo-labeller's 3D points, so it carries pitch and roll, which 2D landmarks alone leave loosely determined
    (with the 2D points fitted, a wrong pitch can be absorbed by the shape). On the AFLW2000-3D dev faces MediaPipe
    finds, this fit has pitch / yaw / roll MAE 4.6 / 3.7 / 2.3 deg.

    Args:
        rotation: (B, 3, 3) predicted rotations.
        landmarks: (B, P, 2) target points in crop pixels, as :func:`pseudo_rotation`.
        depth: (B, P) their relative depth.
        weights: (B, P) the batch's ``depth_weights`` times whether a 2D target exists.
        reference: (68, 3) mean-face landmarks in the model frame.
        min_points: faces with fewer inner points carrying depth get no pose target.

    Returns:
        Scalar mean over the faces with a target (0 with a graph when none has one).
    """
    with torch.no_grad():
        target = pseudo_rotation(landmarks, depth, weights, reference).to(rotation.dtype)
        known = (weights[:, PSEUDO_POSE_POINTS] > 0).sum(1) >= min_points
    return pose_loss(rotation, target, known)


#: Labelled yaws are clamped to +-this many degrees before they are compared with a prediction (AFLW has faces
#: turned past profile, which :func:`facerecon.geometry.matrix_to_euler`'s yaw range cannot express).
YAW_LABEL_MAX_DEG = 89.0


def yaw_loss(rotation: torch.Tensor, target_deg: torch.Tensor, max_deg: float = YAW_LABEL_MAX_DEG,
             beta: float = 0.05) -> torch.Tensor:
    """Smooth-L1 error of the predicted yaw against a labelled yaw, on the samples that have a label.

    The predicted yaw is the first angle of :func:`facerecon.geometry.matrix_to_euler` (``atan2(-R02, cos yaw)``,
    which depends on the rotation only through the direction the face points in, so pitch and roll are free).
    Labels beyond +-``max_deg`` (AFLW has faces turned past profile, which that Euler range cannot express) are
    clamped to +-``max_deg``.

    Args:
        rotation: (B, 3, 3) predicted rotations.
        target_deg: (B,) labelled yaw in degrees, NaN where unknown (AFLW2000-3D sign: > 0 turns towards image left).
        max_deg: clamp of the labels in degrees.
        beta: smooth-L1 threshold in radians (quadratic below, linear above: robust to label noise).

    Returns:
        Scalar mean over the labelled samples (0 with a graph when none is labelled). Convention: radians.
    """
    known = torch.isfinite(target_deg)
    target = torch.deg2rad(torch.where(known, target_deg, torch.zeros_like(target_deg)).clamp(-max_deg, max_deg))
    yaw = matrix_to_euler(rotation)[..., 0]
    err = torch.nn.functional.smooth_l1_loss(yaw, target.to(yaw.dtype), beta=beta, reduction="none")
    m = known.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def photometric_loss(rendered: torch.Tensor, photo: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Skin-masked photometric loss: weighted mean Euclidean RGB distance between render and photo.

    Args:
        rendered: (B, 3, H, W) re-rendered faces in [0, 1].
        photo: (B, 3, H, W) photos in [0, 1].
        weight: (B, 1, H, W) per-pixel weight (face mask x skin probability).

    Returns:
        Scalar loss (RGB distance in [0, sqrt(3)]).
    """
    dist = torch.sqrt(((rendered - photo) ** 2).sum(1, keepdim=True) + 1e-8)
    return (dist * weight).sum() / weight.sum().clamp_min(1.0)


def render_prediction(out: FaceReconOutput, model: torch.nn.Module, size: int):
    """Render the predicted faces (shaded colours) into their (size x size) input crops."""
    from facerecon.render import render

    screen = model.screen(out.vertices, out.params.scale)
    return render(screen, model.morphable.faces, out.colors.clamp(0, 1), size, size)


def regularization_loss(out: FaceReconOutput, weights: LossWeights) -> torch.Tensor:
    """L_reg: Gaussian priors on identity and albedo, sparsity on expressions, lighting near ambient."""
    p = out.params
    identity = p.identity.square().mean()
    albedo = p.albedo.square().mean()
    expression = p.expression.abs().mean()
    ambient = torch.zeros_like(p.lighting)
    ambient[:, 0] = 1.0
    lighting = (p.lighting - ambient).square().mean()
    return (weights.identity_prior * identity + weights.expression_prior * expression
            + weights.albedo_prior * albedo + weights.lighting_prior * lighting)


def source_landmarks_2d(model: torch.nn.Module, out: FaceReconOutput, source: torch.Tensor,
                        definitions: dict[int, torch.Tensor]) -> torch.Tensor:
    """Predicted 2D landmarks with each sample's own source's landmark definition.

    Annotators of different datasets place some points differently (AFLW's nose wings, brows and mouth centre sit
    2-3 % of the face size away from 300-W's on the same faces), so one set of vertices cannot match both: the
    shape would bend to a compromise. A source listed in ``definitions`` is compared with its own vertices; the
    model's output landmarks keep its configured definition. Every point of such a sample uses the source's
    definition, also where a pseudo-label fills a hidden point, so a definition should differ from the model's only
    at the points that source annotates (``fit_landmarks --sources aflw --keep-jaw`` moves no others).

    Args:
        model: the (unwrapped) FaceRecon (its morphable model and camera).
        out: model output (``params`` and ``landmarks_2d``).
        source: (B,) source ids (:data:`training.data.SOURCE_IDS`; synthetic faces -1).
        definitions: source id -> (68,) vertex indices.

    Returns:
        (B, 68, 2) crop pixels: ``out.landmarks_2d`` where the source has no definition of its own.

    Convention: 0-based crop pixel centres.
    """
    from facerecon.geometry import model_to_camera

    pred = out.landmarks_2d
    p = out.params
    for sid, index in definitions.items():
        use = source == sid
        if not bool(use.any()):
            continue
        pts = model_to_camera(model.morphable.shape_at(p.identity, p.expression, index), p.rotation, p.translation)
        pred = torch.where(use[:, None, None], model.project(pts, p.scale).to(pred.dtype), pred)
    return pred


def total_loss(out: FaceReconOutput, batch: dict[str, torch.Tensor], weights: LossWeights, crop_size: int,
               extend: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module | None = None,
               perceptual: Callable[..., torch.Tensor] | None = None,
               landmarks_2d: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Combine the loss terms available for this batch.

    Args:
        out: model output (with the dense mesh when a photometric, perceptual or vertex term is on).
        batch: ``image`` (B, 3, S, S), ``landmarks`` (B, 71, 2), ``weights`` (B, 71), optionally ``vertices``
            (B, N, 3), ``rotation`` (B, 3, 3) and ``has_vertices`` (B,) for samples with 3D ground truth, and
            ``depth`` / ``depth_weights`` (B, 71) pseudo-label point depth (also the pseudo-pose target), ``yaw`` (B,)
            labelled yaw in degrees (NaN where unknown).
        weights: loss weights.
        crop_size: input crop side.
        extend: maps (B, 68, 2) predictions to the extended (B, 71, 2) layout.
        model: the (unwrapped) FaceRecon, for its camera and mesh; needed by the photometric and perceptual terms.
        perceptual: a :class:`training.perceptual.PerceptualLoss` (needed when ``weights.perceptual > 0``).
        landmarks_2d: (B, 68, 2) predictions the landmark term compares with the targets instead of
            ``out.landmarks_2d`` (e.g. :func:`source_landmarks_2d`).

    Returns:
        The total loss and a dict of the named (detached) parts.
    """
    parts: dict[str, torch.Tensor] = {}
    pred71 = extend(out.landmarks_2d if landmarks_2d is None else landmarks_2d)
    importance = point_weights(pred71.shape[1], weights.eye_weight, weights.mouth_weight, pred71.device,
                               pred71.dtype)
    parts["landmark"] = landmark_loss(pred71, batch["landmarks"], batch["weights"], crop_size, importance,
                                      weights.landmark_norm)
    parts["reg"] = regularization_loss(out, weights)
    total = weights.landmark * parts["landmark"] + weights.regularization * parts["reg"]
    if "vertices" in batch and weights.recon > 0 and out.vertices is not None:
        parts["recon"] = vertex_loss(out.vertices, batch["vertices"], batch.get("has_vertices"))
        total = total + weights.recon * parts["recon"]
    if "depth" in batch and weights.depth > 0:
        depth = extend(out.landmarks_3d)[..., 2] * out.params.scale[:, None]
        parts["depth"] = depth_loss(depth, batch["depth"], batch["depth_weights"], crop_size)
        total = total + weights.depth * parts["depth"]
    if "yaw" in batch and weights.yaw > 0:
        parts["yaw"] = yaw_loss(out.params.rotation, batch["yaw"])
        total = total + weights.yaw * parts["yaw"]
    if "depth" in batch and weights.pseudo_pose > 0:
        if model is None:
            raise ValueError("the pseudo-pose term needs the model (its mean-face landmarks)")
        known = batch["depth_weights"] * (batch["weights"] > 0).to(batch["depth_weights"].dtype)
        parts["pseudo_pose"] = pseudo_pose_loss(out.params.rotation, batch["landmarks"], batch["depth"], known,
                                                model.morphable.landmark_mean)
        total = total + weights.pseudo_pose * parts["pseudo_pose"]
    if "rotation" in batch and weights.pose > 0:
        parts["pose"] = pose_loss(out.params.rotation, batch["rotation"], batch.get("has_vertices"))
        total = total + weights.pose * parts["pose"]
    if weights.photometric > 0 or weights.perceptual > 0:
        if model is None or out.vertices is None:
            raise ValueError("photometric / perceptual terms need the dense mesh and the model")
        from facerecon.skin import skin_mask

        rendered = render_prediction(out, model, crop_size)
        photo = batch["image"]
        with torch.no_grad():
            skin = skin_mask(photo, rendered.mask, out.landmarks_2d.detach())
        if weights.photometric > 0:
            parts["photometric"] = photometric_loss(rendered.image, photo, rendered.mask * skin)
            total = total + weights.photometric * parts["photometric"]
        if weights.perceptual > 0:
            if perceptual is None:
                raise ValueError("weights.perceptual > 0 needs a perceptual loss module")
            parts["perceptual"] = perceptual(rendered.image, photo, rendered.mask)
            total = total + weights.perceptual * parts["perceptual"]
    parts["total"] = total
    return total, {k: v.detach() for k, v in parts.items()}
