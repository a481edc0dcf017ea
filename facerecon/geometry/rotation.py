"""Rotation representations: axis-angle, 6D (Zhou et al. 2019), AFLW2000-3D Euler angles, rotation matrices.

All functions are pure and batched over arbitrary leading dimensions ``...``. Rotation matrices act on column
vectors (``x' = R @ x``) in the model/view frame (+x subject's left, +y up, +z towards the viewer); angles are radians.
"""

from __future__ import annotations

import torch

__all__ = [
    "axis_angle_to_matrix",
    "euler_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_euler",
    "matrix_to_rotation_6d",
    "mean_rotation",
    "mirror_rotation",
    "rotation_6d_to_matrix",
]

# Below this squared angle the sin(t)/t-type factors are evaluated with a Taylor series. With terms up to t^8 the
# truncation error is < 1e-17 for t^2 < 1e-2, and the series has no cancellation, so values and gradients are exact
# to machine precision in float32 and float64.
_TAYLOR_THETA2 = 1e-2


def _skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix ``[v]_x`` of ``v`` (..., 3) -> (..., 3, 3), so that ``[v]_x @ u == v x u``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        [
            torch.stack([zero, -z, y], dim=-1),
            torch.stack([z, zero, -x], dim=-1),
            torch.stack([-y, x, zero], dim=-1),
        ],
        dim=-2,
    )


def _sinc_factors(theta2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(sin(t)/t, (1 - cos t)/t^2)`` for ``t = sqrt(theta2)``, NaN-free with finite gradients at 0."""
    small = theta2 < _TAYLOR_THETA2
    safe_t2 = torch.where(small, torch.ones_like(theta2), theta2)
    t = torch.sqrt(safe_t2)
    a_exact = torch.sin(t) / t
    half = 0.5 * t
    b_exact = 0.5 * (torch.sin(half) / half) ** 2  # (1 - cos t) / t^2 without cancellation
    t2 = theta2
    a_taylor = 1.0 - t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0 * (1.0 - t2 / 72.0)))
    b_taylor = 0.5 * (1.0 - t2 / 12.0 * (1.0 - t2 / 30.0 * (1.0 - t2 / 56.0 * (1.0 - t2 / 90.0))))
    return torch.where(small, a_taylor, a_exact), torch.where(small, b_taylor, b_exact)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Convert axis-angle vectors to rotation matrices (Rodrigues' formula).

    Args:
        axis_angle: (..., 3) rotation vectors ``w = theta * axis``.

    Returns:
        (..., 3, 3) rotation matrices ``R = I + sin(t)/t [w]_x + (1 - cos t)/t^2 [w]_x^2``.

    Convention: right-handed, radians; ``R`` rotates column vectors counter-clockwise by ``|w|`` about ``w`` (seen
    from the tip of ``w``). Small angles use a Taylor series, so values and gradients are exact and finite at ``w = 0``
    (where ``dR/dw_k`` is the k-th skew generator).
    """
    theta2 = (axis_angle * axis_angle).sum(-1)
    a, b = _sinc_factors(theta2)
    k = _skew(axis_angle)
    eye = torch.eye(3, device=axis_angle.device, dtype=axis_angle.dtype)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Convert rotation matrices to axis-angle vectors.

    Args:
        matrix: (..., 3, 3) rotation matrices.

    Returns:
        (..., 3) rotation vectors ``theta * axis`` with ``theta`` in [0, pi].

    Convention: inverse of :func:`axis_angle_to_matrix`; radians. For ``theta < 2 pi / 3`` the axis comes from the
    antisymmetric part (accurate, smooth gradients); above it from the symmetric part, so the result stays accurate up
    to ``theta = pi``, where the sign of the axis is ambiguous (either of ``+-pi * axis`` is returned) and gradients
    are not meaningful.
    """
    m = matrix
    vee = torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], dim=-1)
    vee = 0.5 * vee  # sin(theta) * axis
    sin_t = torch.linalg.vector_norm(vee, dim=-1)
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cos_t = ((trace - 1.0) * 0.5).clamp(-1.0, 1.0)
    # Squared sine with a floor so that the atan2 below is differentiable at theta = 0.
    sin_t2 = (vee * vee).sum(-1)
    theta = torch.atan2(torch.sqrt(sin_t2.clamp_min(torch.finfo(m.dtype).tiny)), cos_t)

    # Branch 1 (theta < 2pi/3): w = theta / sin(theta) * vee, with a Taylor series of t/sin(t) near zero.
    near_pi = cos_t < -0.5
    small = sin_t2 < _TAYLOR_THETA2
    safe_sin = torch.where(small | near_pi, torch.ones_like(sin_t), sin_t)
    safe_theta = torch.where(small | near_pi, torch.ones_like(theta), theta)
    t2 = theta * theta
    ratio_taylor = 1.0 + t2 * (1.0 / 6.0 + t2 * (7.0 / 360.0 + t2 * (31.0 / 15120.0 + t2 * 127.0 / 604800.0)))
    ratio = torch.where(small, ratio_taylor, safe_theta / safe_sin)
    w_regular = ratio[..., None] * vee

    # Branch 2 (theta >= 2pi/3): (R + R^T)/2 - cos(t) I = (1 - cos t) a a^T; take the column of the largest diagonal.
    sym = 0.5 * (m + m.transpose(-1, -2))
    diag = torch.diagonal(sym, dim1=-2, dim2=-1) - cos_t[..., None]
    k = diag.argmax(dim=-1, keepdim=True)  # (..., 1)
    col = torch.take_along_dim(sym, k[..., None, :], dim=-1).squeeze(-1)  # (..., 3) column k of sym
    eye = torch.eye(3, device=m.device, dtype=m.dtype)
    eye_col = torch.take_along_dim(eye.expand(m.shape), k[..., None, :], dim=-1).squeeze(-1)
    col = col - cos_t[..., None] * eye_col  # column k of (1 - cos t) a a^T = (1 - cos t) a_k a
    d_k = torch.take_along_dim(diag, k, dim=-1).squeeze(-1)  # (1 - cos t) a_k^2
    one_minus_cos = torch.where(near_pi, 1.0 - cos_t, torch.ones_like(cos_t))
    denom = torch.sqrt((torch.where(near_pi, d_k, torch.ones_like(d_k)) * one_minus_cos).clamp_min(1e-30))
    axis = col / denom[..., None]
    sign = torch.where((axis * vee).sum(-1) < 0, -torch.ones_like(cos_t), torch.ones_like(cos_t))
    w_near_pi = axis * (sign * theta)[..., None]

    return torch.where(near_pi[..., None], w_near_pi, w_regular)


def _normalize(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum(-1, keepdim=True).clamp_min(eps * eps))


def rotation_6d_to_matrix(r6: torch.Tensor) -> torch.Tensor:
    """Convert the continuous 6D representation to rotation matrices (Gram-Schmidt, Zhou et al. 2019).

    Args:
        r6: (..., 6) two 3-vectors; ``r6[..., :3]`` is (proportional to) column 0 of ``R`` and ``r6[..., 3:]`` spans
            columns 0 and 1 with it. They must not be (near) parallel.

    Returns:
        (..., 3, 3) rotation matrices with columns ``b1 = n(a1)``, ``b2 = n(a2 - (b1 . a2) b1)``, ``b3 = b1 x b2``.

    Convention: columns of ``R`` (not rows); ``[1, 0, 0, 0, 1, 0]`` maps to the identity.
    """
    a1, a2 = r6[..., :3], r6[..., 3:]
    b1 = _normalize(a1)
    b2 = _normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    """Convert rotation matrices to the 6D representation.

    Args:
        matrix: (..., 3, 3) rotation matrices.

    Returns:
        (..., 6) first two columns of ``matrix`` concatenated (column 0, then column 1).

    Convention: inverse of :func:`rotation_6d_to_matrix` for rotation matrices.
    """
    return torch.cat([matrix[..., :, 0], matrix[..., :, 1]], dim=-1)


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Convert AFLW2000-3D Euler angles to rotation matrices.

    Args:
        angles: (..., 3) ``(yaw, pitch, roll)`` in radians.

    Returns:
        (..., 3, 3) ``R = Rx(pitch) @ Ry(yaw) @ Rz(roll)`` with the AFLW matrices
        ``Rx(p) = [[1,0,0],[0,c,s],[0,-s,c]]``, ``Ry(y) = [[c,0,-s],[0,1,0],[s,0,c]]``,
        ``Rz(r) = [[c,s,0],[-s,c,0],[0,0,1]]`` (standard right-hand rotations by -pitch, -yaw, -roll).

    Convention: radians; ``R`` acts on model-frame points (+x subject's left, +y up, +z towards the viewer).
    yaw > 0 turns the face towards image left (nose tip (0, 0, 1) moves to -x); pitch > 0 looks up (nose moves to +y);
    roll > 0 is a clockwise in-plane rotation as displayed (the subject's left eye at +x moves to -y).
    """
    yaw, pitch, roll = angles.unbind(-1)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cr, sr = torch.cos(roll), torch.sin(roll)
    row0 = torch.stack([cy * cr, cy * sr, -sy], dim=-1)
    row1 = torch.stack([sp * sy * cr - cp * sr, cp * cr + sp * sy * sr, sp * cy], dim=-1)
    row2 = torch.stack([cp * sy * cr + sp * sr, cp * sy * sr - sp * cr, cp * cy], dim=-1)
    return torch.stack([row0, row1, row2], dim=-2)


def _safe_atan2(y: torch.Tensor, x: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """``atan2(y, x)`` where ``use`` is true, and 0 (with zero gradient, never NaN) elsewhere."""
    degenerate = (~use) | ((x == 0) & (y == 0))
    out = torch.atan2(torch.where(degenerate, torch.zeros_like(y), y), torch.where(degenerate, torch.ones_like(x), x))
    return torch.where(use, out, torch.zeros_like(out))


def matrix_to_euler(matrix: torch.Tensor) -> torch.Tensor:
    """Convert rotation matrices to AFLW2000-3D Euler angles.

    Args:
        matrix: (..., 3, 3) rotation matrices.

    Returns:
        (..., 3) ``(yaw, pitch, roll)`` in radians with yaw in [-pi/2, pi/2] and pitch, roll in (-pi, pi].

    Convention: inverse of :func:`euler_to_matrix` (same AFLW convention and signs). At gimbal lock (|yaw| = pi/2,
    detected as ``cos(yaw) < sqrt(eps)``) roll is set to 0 and pitch absorbs the in-plane angle. NaN-free everywhere;
    gradients are finite everywhere and meaningful away from gimbal lock.
    """
    m = matrix
    r02, r12, r22 = m[..., 0, 2], m[..., 1, 2], m[..., 2, 2]
    cos_yaw2 = r12 * r12 + r22 * r22
    eps = torch.finfo(m.dtype).eps
    cos_yaw = torch.sqrt(cos_yaw2.clamp_min(eps * eps))
    yaw = torch.atan2(-r02.clamp(-1.0, 1.0), cos_yaw)
    regular = cos_yaw2 >= eps  # cos(yaw) >= sqrt(eps)
    pitch_regular = _safe_atan2(r12, r22, regular)
    roll_regular = _safe_atan2(m[..., 0, 1], m[..., 0, 0], regular)
    # Gimbal lock, roll := 0: row 1 = [sin(pitch) sin(yaw), cos(pitch), 0] with sin(yaw) = +-1.
    sin_yaw_sign = torch.where(r02 > 0, -torch.ones_like(r02), torch.ones_like(r02))
    pitch_locked = _safe_atan2(sin_yaw_sign * m[..., 1, 0], m[..., 1, 1], ~regular)
    pitch = torch.where(regular, pitch_regular, pitch_locked)
    return torch.stack([yaw, pitch, roll_regular], dim=-1)


def mirror_rotation(matrix: torch.Tensor) -> torch.Tensor:
    """The rotation of the mirror-image head: ``M @ R @ M`` with ``M = diag(-1, 1, 1)``.

    Args:
        matrix: (..., 3, 3) rotation matrices.

    Returns:
        (..., 3, 3) rotations. If ``R`` turns a face, ``M R M`` turns the x-mirrored face so that the result is the
        x-mirrored image of the original (Euler angles: yaw and roll change sign, pitch is kept).

    Convention: model/view frame (+x subject's left); mirroring is x -> -x in both frames.
    """
    sign = torch.tensor([-1.0, 1.0, 1.0], device=matrix.device, dtype=matrix.dtype)
    return matrix * sign[:, None] * sign[None, :]


def mean_rotation(matrices: torch.Tensor) -> torch.Tensor:
    """Chordal L2 mean of rotations: the rotation nearest (Frobenius) to their arithmetic mean.

    Args:
        matrices: (..., K, 3, 3) K rotations per batch element.

    Returns:
        (..., 3, 3) ``U diag(1, 1, det(U V^T)) V^T`` for the SVD ``U S V^T`` of the mean matrix. For two rotations
        about one axis by angles a and b (|a - b| < pi) this is the rotation by (a + b) / 2.

    Convention: as the inputs (no frame assumption); undefined when the mean matrix is rank-deficient (rotations
    spread over a half-turn or more).
    """
    return _nearest_rotation(matrices.mean(dim=-3))


def _nearest_rotation(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> the proper rotation ``U diag(1, 1, det(U V^T)) V^T`` for the SVD ``U S V^T`` of ``m``."""
    u, _, vh = torch.linalg.svd(m)
    d = torch.linalg.det(u @ vh)
    fix = torch.cat([torch.ones_like(m[..., 0, :2]), d[..., None]], dim=-1)
    return (u * fix[..., None, :]) @ vh


def procrustes_rotation(source: torch.Tensor, target: torch.Tensor,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """Rotation of the weighted similarity Procrustes fit ``target ~ s R source + t`` (Kabsch / Umeyama).

    Args:
        source: (..., P, 3) points.
        target: (..., P, 3) corresponding points (any scale and offset: they are absorbed by ``s`` and ``t``).
        weights: optional (..., P) non-negative point weights (0 drops a point); all ones when None.

    Returns:
        (..., 3, 3) proper rotation ``R`` (det +1) minimising ``sum_i w_i |s R x_i + t - y_i|^2``, i.e.
        ``U diag(1, 1, det(U V^T)) V^T`` for the SVD of the weighted cross-covariance ``sum_i w_i y_i x_i^T``
        of the centred points.

    Convention: ``R`` maps the source frame to the target frame; undefined when fewer than three weighted points are
    in general position.
    """
    if source.shape != target.shape or source.shape[-1] != 3:
        raise ValueError(f"source and target must both be (..., P, 3), got {tuple(source.shape)} and "
                         f"{tuple(target.shape)}")
    w = torch.ones_like(source[..., 0]) if weights is None else weights.to(source.dtype)
    if w.shape != source.shape[:-1]:
        raise ValueError(f"weights must be (..., P) = {tuple(source.shape[:-1])}, got {tuple(w.shape)}")
    w = w[..., None]
    total = w.sum(-2, keepdim=True).clamp_min(torch.finfo(source.dtype).tiny)
    xs = source - (w * source).sum(-2, keepdim=True) / total
    ys = target - (w * target).sum(-2, keepdim=True) / total
    return _nearest_rotation((w * ys).transpose(-1, -2) @ xs)  # cross-covariance sum w y x^T
