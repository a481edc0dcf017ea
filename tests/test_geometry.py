from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from facerecon.geometry import (
    SH_CONSTANTS,
    axis_angle_to_matrix,
    box_area,
    box_from_points,
    box_iou,
    camera_to_view,
    crop_affine,
    crop_to_image,
    euler_to_matrix,
    face_normals,
    gather_vertices,
    image_to_crop,
    matrix_to_axis_angle,
    matrix_to_euler,
    matrix_to_rotation_6d,
    model_to_camera,
    rotation_6d_to_matrix,
    scale_box,
    sh_basis,
    sh_shading,
    shade,
    vertex_face_incidence,
    vertex_normals,
    view_boxes,
    weak_perspective_project,
)

DTYPES = [torch.float32, torch.float64]


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_rotation(r: torch.Tensor) -> None:
    eye = torch.eye(3, dtype=r.dtype).expand(r.shape)
    atol = 1e-5 if r.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye, atol=atol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(r.shape[:-2], dtype=r.dtype), atol=atol, rtol=0)


# Standard right-hand rotations, used to check the AFLW matrices.
def rot_x(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)


def rot_y(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)


def rot_z(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("dtype", DTYPES)
def test_axis_angle_quarter_turn_about_z(dtype: torch.dtype) -> None:
    r = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=dtype))
    out = r @ torch.tensor([1.0, 0.0, 0.0], dtype=dtype)
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 0.0], dtype=dtype), **tol(dtype))
    assert r.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [(1,), (3,), (2, 4)])
def test_axis_angle_orthonormal_and_round_trip(dtype: torch.dtype, batch: tuple[int, ...]) -> None:
    axis = torch.nn.functional.normalize(torch.randn(*batch, 3, generator=gen(1), dtype=dtype), dim=-1)
    angle = torch.rand(*batch, 1, generator=gen(2), dtype=dtype) * 3.0  # up to ~172 deg
    w = axis * angle
    w_before = w.clone()
    r = axis_angle_to_matrix(w)
    assert r.shape == (*batch, 3, 3)
    assert_rotation(r)
    back = matrix_to_axis_angle(r)
    assert torch.equal(w, w_before)
    atol = 2e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(back, w, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_axis_angle_small_and_zero(dtype: torch.dtype) -> None:
    w = torch.tensor([[0.0, 0.0, 0.0], [1e-8, -2e-8, 3e-8], [1e-3, 2e-3, -1e-3], [0.05, 0.0, 0.06]], dtype=dtype)
    r = axis_angle_to_matrix(w)
    assert torch.isfinite(r).all()
    torch.testing.assert_close(r[0], torch.eye(3, dtype=dtype), atol=0, rtol=0)
    # Compare with the closed form evaluated in float64 (well conditioned for these angles).
    w64 = w.double()
    theta = w64.norm(dim=-1).clamp_min(1e-300)
    k = torch.zeros(4, 3, 3, dtype=torch.float64)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -w64[:, 2], w64[:, 1], -w64[:, 0]
    k = k - k.transpose(1, 2)
    a = (torch.sin(theta) / theta)[:, None, None]
    b = (2 * torch.sin(theta / 2) ** 2 / theta**2)[:, None, None]
    expected = torch.eye(3, dtype=torch.float64) + a * k + b * (k @ k)
    expected[0] = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(r.double(), expected, atol=1e-7 if dtype == torch.float32 else 1e-15, rtol=0)
    torch.testing.assert_close(matrix_to_axis_angle(r), w, atol=1e-7 if dtype == torch.float32 else 1e-14, rtol=0)


def test_axis_angle_gradient_at_zero_is_skew_generator() -> None:
    generators = [
        torch.tensor([[0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=torch.float64),
        torch.tensor([[0, 0, 1], [0, 0, 0], [-1, 0, 0]], dtype=torch.float64),
        torch.tensor([[0, -1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float64),
    ]
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(axis_angle_to_matrix, w)  # (3, 3, 3): d R_ij / d w_k
    assert torch.isfinite(jac).all()
    for k in range(3):
        torch.testing.assert_close(jac[..., k], generators[k], atol=1e-15, rtol=0)
    # float32 as well, via backward.
    w32 = torch.zeros(3, requires_grad=True)
    (axis_angle_to_matrix(w32) * torch.arange(9.0).reshape(3, 3)).sum().backward()
    assert w32.grad is not None and torch.isfinite(w32.grad).all()


def test_axis_angle_near_pi() -> None:
    axis = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.8], [1.0, 0.0, 0.0]], dtype=torch.float64))
    for angle in [math.pi - 1e-3, math.pi - 1e-7, math.pi]:
        w = axis * angle
        back = matrix_to_axis_angle(axis_angle_to_matrix(w))
        assert torch.isfinite(back).all()
        # At exactly pi either sign is valid: compare the matrices.
        torch.testing.assert_close(axis_angle_to_matrix(back), axis_angle_to_matrix(w), atol=1e-12, rtol=0)
        if angle < math.pi - 1e-6:
            torch.testing.assert_close(back, w, atol=1e-8, rtol=0)


def test_matrix_to_axis_angle_gradient_finite_at_identity() -> None:
    r = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1).requires_grad_(True)
    matrix_to_axis_angle(r).sum().backward()
    assert r.grad is not None and torch.isfinite(r.grad).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotation_6d(dtype: torch.dtype) -> None:
    identity = rotation_6d_to_matrix(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=dtype))
    torch.testing.assert_close(identity, torch.eye(3, dtype=dtype), atol=0, rtol=0)
    r6 = torch.randn(3, 6, generator=gen(3), dtype=dtype)
    r6_before = r6.clone()
    r = rotation_6d_to_matrix(r6)
    assert torch.equal(r6, r6_before)
    assert_rotation(r)
    # Column 0 is the normalised first vector; round trip of a rotation is exact.
    torch.testing.assert_close(r[..., :, 0], torch.nn.functional.normalize(r6[:, :3], dim=-1), **tol(dtype))
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(r)), r, **tol(dtype))
    torch.testing.assert_close(matrix_to_rotation_6d(r)[:, :3], r[:, :, 0], atol=0, rtol=0)
    torch.testing.assert_close(matrix_to_rotation_6d(r)[:, 3:], r[:, :, 1], atol=0, rtol=0)


def test_aflw_matrices_equal_product_formula() -> None:
    gen_ = gen(4)
    for _ in range(5):
        yaw, pitch, roll = ((torch.rand(3, generator=gen_, dtype=torch.float64) - 0.5) * 3).tolist()
        cy, sy, cp, sp, cr, sr = (
            math.cos(yaw),
            math.sin(yaw),
            math.cos(pitch),
            math.sin(pitch),
            math.cos(roll),
            math.sin(roll),
        )
        rx = torch.tensor([[1, 0, 0], [0, cp, sp], [0, -sp, cp]], dtype=torch.float64)
        ry = torch.tensor([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]], dtype=torch.float64)
        rz = torch.tensor([[cr, sr, 0], [-sr, cr, 0], [0, 0, 1]], dtype=torch.float64)
        r = euler_to_matrix(torch.tensor([yaw, pitch, roll], dtype=torch.float64))
        torch.testing.assert_close(r, rx @ ry @ rz, atol=1e-14, rtol=0)
        # ... which are the standard right-hand rotations by the negated angles.
        torch.testing.assert_close(r, rot_x(-pitch) @ rot_y(-yaw) @ rot_z(-roll), atol=1e-14, rtol=0)


def test_euler_sign_meanings() -> None:
    a = 0.3
    nose = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    left_eye = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    yawed = euler_to_matrix(torch.tensor([a, 0.0, 0.0], dtype=torch.float64)) @ nose
    torch.testing.assert_close(yawed, torch.tensor([-math.sin(a), 0.0, math.cos(a)], dtype=torch.float64))
    pitched = euler_to_matrix(torch.tensor([0.0, a, 0.0], dtype=torch.float64)) @ nose
    torch.testing.assert_close(pitched, torch.tensor([0.0, math.sin(a), math.cos(a)], dtype=torch.float64))
    rolled = euler_to_matrix(torch.tensor([0.0, 0.0, a], dtype=torch.float64)) @ left_eye
    torch.testing.assert_close(rolled, torch.tensor([math.cos(a), -math.sin(a), 0.0], dtype=torch.float64))
    # In the image (camera y down), yaw > 0 moves the nose to image left, pitch > 0 moves it up (smaller v),
    # and roll > 0 moves the +x eye down (larger v): clockwise as displayed.
    rot = euler_to_matrix(torch.tensor([[a, 0, 0], [0, a, 0], [0, 0, a]], dtype=torch.float64))
    pts = torch.stack([nose, nose, left_eye])[:, None, :]
    uv = weak_perspective_project(
        model_to_camera(pts, rot, torch.zeros(3, 3, dtype=torch.float64)),
        torch.ones(3, dtype=torch.float64),
        torch.zeros(3, 2, dtype=torch.float64),
    )[:, 0]
    assert uv[0, 0] < 0 and uv[1, 1] < 0 and uv[2, 1] > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_euler_round_trip(dtype: torch.dtype) -> None:
    limit = math.radians(80)
    angles = (torch.rand(64, 3, generator=gen(5), dtype=dtype) * 2 - 1) * limit
    angles_before = angles.clone()
    r = euler_to_matrix(angles)
    assert_rotation(r)
    back = matrix_to_euler(r)
    assert torch.equal(angles, angles_before)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(back, angles, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_to_euler_gimbal_lock_is_finite(dtype: torch.dtype) -> None:
    angles = torch.tensor(
        [[math.pi / 2, 0.4, 0.1], [-math.pi / 2, -0.2, 0.5], [math.pi / 2 - 1e-9, 0.3, 0.0]], dtype=dtype
    )
    r = euler_to_matrix(angles).requires_grad_(True)
    back = matrix_to_euler(r)
    assert torch.isfinite(back).all()
    assert (back[:, 0].abs() <= math.pi / 2 + 1e-6).all()
    # The angles differ from the input (roll is folded into pitch) but must give the same rotation.
    torch.testing.assert_close(
        euler_to_matrix(back.detach()), r.detach(), atol=1e-5 if dtype == torch.float32 else 1e-7, rtol=0
    )
    back.sum().backward()
    assert r.grad is not None and torch.isfinite(r.grad).all()


def test_rotation_gradchecks() -> None:
    w = torch.tensor(
        [[0.3, -0.2, 0.5], [1e-4, 2e-4, -1e-4], [0.05, 0.02, 0.01], [0.0, 0.0, 0.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    assert gradcheck(axis_angle_to_matrix, (w,))
    r6 = torch.randn(2, 6, generator=gen(6), dtype=torch.float64, requires_grad=True)
    assert gradcheck(rotation_6d_to_matrix, (r6,))
    e = torch.tensor([[0.3, -0.4, 0.2], [-1.0, 0.5, 1.2]], dtype=torch.float64, requires_grad=True)
    assert gradcheck(euler_to_matrix, (e,))
    r = euler_to_matrix(e.detach()).requires_grad_(True)
    assert gradcheck(matrix_to_euler, (r,))
    r_aa = axis_angle_to_matrix(w.detach()[:3]).requires_grad_(True)
    assert gradcheck(matrix_to_axis_angle, (r_aa,))


# ------------------------------------------------------------------------------------------------------------- camera


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [1, 3])
def test_model_to_camera_and_projection(dtype: torch.dtype, b: int) -> None:
    pts = torch.randn(b, 5, 3, generator=gen(7), dtype=dtype)
    rot = axis_angle_to_matrix(torch.randn(b, 3, generator=gen(8), dtype=dtype))
    t = torch.randn(b, 3, generator=gen(9), dtype=dtype)
    inputs = [x.clone() for x in (pts, rot, t)]
    cam = model_to_camera(pts, rot, t)
    assert cam.shape == (b, 5, 3)
    view = torch.einsum("bij,bnj->bni", rot, pts)
    expected = view * torch.tensor([1.0, -1.0, -1.0], dtype=dtype) + t[:, None]
    torch.testing.assert_close(cam, expected, **tol(dtype))
    torch.testing.assert_close(camera_to_view(cam, t), view, **tol(dtype))
    s = torch.rand(b, generator=gen(10), dtype=dtype) + 1
    c = torch.randn(b, 2, generator=gen(11), dtype=dtype)
    uv = weak_perspective_project(cam, s, c)
    assert uv.shape == (b, 5, 2) and uv.dtype == dtype
    torch.testing.assert_close(uv, s[:, None, None] * cam[..., :2] + c[:, None], **tol(dtype))
    for before, after in zip(inputs, (pts, rot, t), strict=True):
        assert torch.equal(before, after)


def test_model_frame_to_image_orientation() -> None:
    # Identity head pose: model +x (subject's left) -> image right, model +y (up) -> image up (smaller v),
    # model +z (towards viewer) -> smaller camera depth.
    pts = torch.eye(3, dtype=torch.float64)[None]
    cam = model_to_camera(pts, torch.eye(3, dtype=torch.float64)[None], torch.tensor([[0.0, 0.0, 500.0]]).double())
    uv = weak_perspective_project(cam, torch.tensor([2.0]).double(), torch.tensor([[100.0, 50.0]]).double())
    torch.testing.assert_close(uv[0], torch.tensor([[102.0, 50.0], [100.0, 48.0], [100.0, 50.0]]).double())
    assert cam[0, 2, 2] < 500.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_crop_maps(dtype: torch.dtype) -> None:
    # Whole image box is the identity when crop_size == image size.
    w = 64
    box = torch.tensor([[-0.5, -0.5, w - 0.5, w - 0.5]], dtype=dtype)
    p = torch.tensor([[[0.0, 0.0], [12.25, 40.5], [63.0, 63.0]]], dtype=dtype)
    torch.testing.assert_close(image_to_crop(p, box, w), p, **tol(dtype))
    # Box edges map to crop edges.
    box = torch.tensor([[10.0, 20.0, 50.0, 70.0], [-3.0, 4.0, 13.0, 20.0], [0.0, 0.0, 224.0, 224.0]], dtype=dtype)
    edges = torch.stack([box[:, :2], box[:, 2:]], dim=1)
    torch.testing.assert_close(
        image_to_crop(edges, box, 128),
        torch.tensor([-0.5, 127.5], dtype=dtype)[None, :, None].expand(3, 2, 2),
        **tol(dtype),
    )
    # Round trips.
    q = torch.rand(3, 7, 2, generator=gen(12), dtype=dtype) * 128
    q_before, box_before = q.clone(), box.clone()
    torch.testing.assert_close(image_to_crop(crop_to_image(q, box, 128), box, 128), q, **tol(dtype))
    torch.testing.assert_close(crop_to_image(image_to_crop(q, box, 128), box, 128), q, **tol(dtype))
    assert torch.equal(q, q_before) and torch.equal(box, box_before)
    # crop_affine is exactly the same map.
    m = crop_affine(box, 128)
    assert m.shape == (3, 2, 3)
    via_m = q @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]
    torch.testing.assert_close(via_m, image_to_crop(q, box, 128), **tol(dtype))


def _blob(shape: tuple[int, int], x: float, y: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)


def _centroid(img: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    total = img.sum()
    return float((img * xx).sum() / total), float((img * yy).sum() / total)


@pytest.mark.parametrize(
    ("box", "crop_size"),
    [
        ([40.3, 22.7, 104.3, 86.7], 128),  # 2x upsampling
        ([30.0, 15.0, 110.0, 95.0], 64),  # 0.8x
        ([45.5, 30.25, 93.5, 70.25], 96),  # non-square box (w=48, h=40)
    ],
)
def test_crop_affine_matches_cv2_warp(box: list[float], crop_size: int) -> None:
    dot = (71.3, 52.6)
    img = _blob((120, 150), *dot, sigma=3.0)
    cx, cy = _centroid(img)
    assert abs(cx - dot[0]) < 1e-3 and abs(cy - dot[1]) < 1e-3
    box_t = torch.tensor([box], dtype=torch.float64)
    m = crop_affine(box_t, crop_size)[0].numpy()
    warped = cv2.warpAffine(img, m, (crop_size, crop_size), flags=cv2.INTER_LINEAR)
    expected = image_to_crop(torch.tensor([[dot]], dtype=torch.float64), box_t, crop_size)[0, 0].tolist()
    got = _centroid(warped)
    # cv2 quantises source coordinates to 1/32 pixel, i.e. up to ~1/64 source pixel of bias, scaled into the crop.
    # A half-pixel convention error would be off by >= 0.5 crop pixels.
    tolerance = 0.02 * max(1.0, crop_size / (box[2] - box[0]))
    assert abs(got[0] - expected[0]) < tolerance and abs(got[1] - expected[1]) < tolerance, (got, expected)


def test_box_from_points() -> None:
    pts = torch.tensor([[[0.0, 0.0], [10.0, 4.0], [4.0, 2.0], [100.0, 100.0]]])
    valid = torch.tensor([[True, True, True, False]])
    box = box_from_points(pts, scale=1.5, valid=valid)
    torch.testing.assert_close(box, torch.tensor([[-2.5, -5.5, 12.5, 9.5]]))
    box_all = box_from_points(pts[:, :3], scale=1.0)
    torch.testing.assert_close(box_all, torch.tensor([[0.0, -3.0, 10.0, 7.0]]))
    # Batched, default scale, square.
    pts3 = torch.randn(3, 10, 2, generator=gen(13), dtype=torch.float64) * 20
    b3 = box_from_points(pts3)
    torch.testing.assert_close(b3[:, 2] - b3[:, 0], b3[:, 3] - b3[:, 1])
    span = (pts3.amax(1) - pts3.amin(1)).amax(-1)
    torch.testing.assert_close(b3[:, 2] - b3[:, 0], 1.6 * span)


def test_view_boxes() -> None:
    box = torch.tensor([[0.0, 0.0, 10.0, 20.0]], dtype=torch.float64)
    views = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.5, 0.0, -0.25], [2.0, -0.5, 0.5]])
    got = view_boxes(box, views)
    assert got.shape == (1, 4, 4) and got.dtype == torch.float64
    want = torch.tensor([[[0.0, 0.0, 10.0, 20.0], [1.0, 0.0, 11.0, 20.0], [2.5, -0.0, 7.5, 10.0],
                          [-10.0, 0.0, 10.0, 40.0]]], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    assert torch.equal(view_boxes(box, views[:1])[:, 0], box) and not box.requires_grad
    with pytest.raises(ValueError, match="views"):
        view_boxes(box, views[:, :2])


def test_box_helpers() -> None:
    box = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 15.0, 15.0]], dtype=torch.float64)
    torch.testing.assert_close(scale_box(box, 2.0), torch.tensor([[-5.0, -10.0, 15.0, 30.0], [0, 0, 20, 20]]).double())
    torch.testing.assert_close(
        scale_box(box, torch.tensor([1.0, 0.5]).double())[1], torch.tensor([7.5, 7.5, 12.5, 12.5]).double()
    )
    torch.testing.assert_close(box_area(box), torch.tensor([200.0, 100.0]).double())
    other = torch.tensor([[0.0, 0.0, 10.0, 20.0], [100.0, 100.0, 101.0, 101.0], [5.0, 5.0, 10.0, 15.0]]).double()
    iou = box_iou(box, other)
    assert iou.shape == (2, 3)
    # box1 & other2: inter = 5*10 = 50, union = 100 + 50 - 50 = 100.  box0 & box1: inter 5*10=50, union 250.
    expected = torch.tensor([[1.0, 0.0, 50 / 200], [50 / 250, 0.0, 50 / 100]]).double()
    torch.testing.assert_close(iou, expected)


def test_camera_gradchecks() -> None:
    cam = torch.randn(2, 4, 3, generator=gen(14), dtype=torch.float64, requires_grad=True)
    s = torch.tensor([1.5, 2.0], dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 2, generator=gen(15), dtype=torch.float64, requires_grad=True)
    assert gradcheck(weak_perspective_project, (cam, s, c))
    p = torch.randn(2, 4, 2, generator=gen(16), dtype=torch.float64, requires_grad=True)
    box = torch.tensor([[1.0, 2.0, 30.0, 33.0], [-5.0, 0.0, 20.0, 20.0]], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda p_, b_: image_to_crop(p_, b_, 64), (p, box))
    assert gradcheck(lambda p_, b_: crop_to_image(p_, b_, 64), (p, box))


# --------------------------------------------------------------------------------------------------------------- mesh

SQUARE_V = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
SQUARE_F = [[0, 1, 2], [0, 2, 3]]  # counter-clockwise seen from +z

CUBE_V = [[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)]


def cube_faces() -> torch.Tensor:
    """Outward-oriented (counter-clockwise from outside) triangles of the cube CUBE_V."""
    verts = torch.tensor(CUBE_V)
    faces = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            idx = [i for i, v in enumerate(CUBE_V) if v[axis] == sign]
            u, w = (axis + 1) % 3, (axis + 2) % 3
            # Sort the 4 corners counter-clockwise around the outward normal.
            ang = [math.atan2(verts[i][w].item(), verts[i][u].item()) * sign for i in idx]
            a, b, c, d = [i for _, i in sorted(zip(ang, idx, strict=True))]
            faces += [[a, b, c], [a, c, d]]
    return torch.tensor(faces, dtype=torch.int64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [1, 3])
def test_flat_square_normals(dtype: torch.dtype, b: int) -> None:
    v = torch.tensor(SQUARE_V, dtype=dtype).expand(b, 4, 3).clone()
    f = torch.tensor(SQUARE_F)
    v_before, f_before = v.clone(), f.clone()
    fn = face_normals(v, f)
    vn = vertex_normals(v, f)
    assert fn.shape == (b, 2, 3) and vn.shape == (b, 4, 3) and vn.dtype == dtype
    torch.testing.assert_close(fn, torch.tensor([0.0, 0.0, 1.0], dtype=dtype).expand(b, 2, 3))
    torch.testing.assert_close(vn, torch.tensor([0.0, 0.0, 1.0], dtype=dtype).expand(b, 4, 3))
    assert torch.equal(v, v_before) and torch.equal(f, f_before)
    # Reversed winding flips the normal.
    torch.testing.assert_close(face_normals(v, f.flip(-1)), -fn)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cube_vertex_normals_point_outward(dtype: torch.dtype) -> None:
    v = torch.tensor(CUBE_V, dtype=dtype)[None] * 2.0 + torch.tensor([1.0, -2.0, 3.0], dtype=dtype)
    f = cube_faces()
    fn = face_normals(v, f)
    centres = v[0][f].mean(1)
    outward = centres - v[0].mean(0)
    assert ((fn[0] * outward).sum(-1) > 0).all()
    vn = vertex_normals(v, f)
    # Corners see 1 or 2 triangles of each adjacent side, so normals are only roughly along the diagonal.
    expected = torch.nn.functional.normalize(torch.tensor(CUBE_V, dtype=dtype), dim=-1)
    assert ((vn[0] * expected).sum(-1) > 0.8).all()
    torch.testing.assert_close(vn.norm(dim=-1), torch.ones(1, 8, dtype=dtype))


def test_vertex_normals_area_weighting_and_isolated_vertex() -> None:
    # Two triangles sharing vertex 0: a big one in the z=0 plane (normal +z) and a small one in x=0 (normal +x).
    v = torch.tensor([[[0.0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 1, 0], [0, 0, 1], [9, 9, 9]]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [0, 3, 4]])
    vn = vertex_normals(v, f)
    # Areas 8 and 0.5: weighted sum = 8 z + 0.5 x.
    torch.testing.assert_close(vn[0, 0], torch.nn.functional.normalize(torch.tensor([0.5, 0, 8.0]).double(), dim=0))
    assert torch.isfinite(vn).all()
    torch.testing.assert_close(vn[0, 5], torch.zeros(3, dtype=torch.float64))
    vg = v.clone().requires_grad_(True)
    vertex_normals(vg, f).sum().backward()
    assert vg.grad is not None and torch.isfinite(vg.grad).all()


def test_vertex_normals_sparse_incidence_matches_scatter() -> None:
    v = (torch.tensor(CUBE_V, dtype=torch.float64)[None].repeat(3, 1, 1)
         + 0.1 * torch.randn(3, 8, 3, generator=gen(5), dtype=torch.float64))
    f = cube_faces()
    inc = vertex_face_incidence(f, 8, torch.float64)
    assert inc.shape == (8, 12) and int(inc.to_dense().sum()) == 36
    torch.testing.assert_close(vertex_normals(v, f, incidence=inc), vertex_normals(v, f))
    vg = v.clone().requires_grad_(True)
    assert gradcheck(lambda x: vertex_normals(x, f, incidence=inc), (vg,))


def test_mesh_gradcheck_and_gather() -> None:
    v = (
        torch.tensor(CUBE_V, dtype=torch.float64)[None].repeat(2, 1, 1)
        + 0.1 * torch.randn(2, 8, 3, generator=gen(17), dtype=torch.float64)
    ).requires_grad_(True)
    f = cube_faces()
    assert gradcheck(lambda x: vertex_normals(x, f), (v,))
    assert gradcheck(lambda x: face_normals(x, f), (v,))
    idx = torch.tensor([7, 0, 3])
    g = gather_vertices(v.detach(), idx)
    assert g.shape == (2, 3, 3)
    torch.testing.assert_close(g, v.detach()[:, idx], atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------------------- SH


@pytest.mark.parametrize("dtype", DTYPES)
def test_sh_basis_values(dtype: torch.dtype) -> None:
    n = torch.nn.functional.normalize(torch.randn(3, 5, 3, generator=gen(18), dtype=dtype), dim=-1)
    basis = sh_basis(n)
    assert basis.shape == (3, 5, 9) and basis.dtype == dtype
    assert torch.equal(basis[..., 0], torch.ones(3, 5, dtype=dtype))
    x, y, z = n.unbind(-1)
    # Y_lm * A_l / (A_0 * Y_00) with the textbook constants.
    y00 = 0.5 * math.sqrt(1 / math.pi)
    a = [math.pi, 2 * math.pi / 3, math.pi / 4]
    c1 = math.sqrt(3 / (4 * math.pi))
    c2 = 0.5 * math.sqrt(15 / math.pi)
    c20 = 0.25 * math.sqrt(5 / math.pi)
    c22 = 0.25 * math.sqrt(15 / math.pi)
    norm = a[0] * y00
    expected = torch.stack([
        torch.ones_like(x), a[1] * c1 * y / norm, a[1] * c1 * z / norm, a[1] * c1 * x / norm,
        a[2] * c2 * x * y / norm, a[2] * c2 * y * z / norm, a[2] * c20 * (3 * z * z - 1) / norm,
        a[2] * c2 * x * z / norm, a[2] * c22 * (x * x - y * y) / norm,
    ], dim=-1)  # fmt: skip
    torch.testing.assert_close(basis, expected, **tol(dtype))
    torch.testing.assert_close(torch.tensor(SH_CONSTANTS[1]), torch.tensor(2 / math.sqrt(3)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [1, 3])
def test_sh_shading(dtype: torch.dtype, b: int) -> None:
    n = torch.nn.functional.normalize(torch.randn(b, 6, 3, generator=gen(19), dtype=dtype), dim=-1)
    coeffs = torch.zeros(b, 9, 3, dtype=dtype)
    coeffs[:, 0] = 1.0
    n_before, c_before = n.clone(), coeffs.clone()
    s = sh_shading(n, coeffs)
    assert s.shape == (b, 6, 3)
    assert torch.equal(s, torch.ones(b, 6, 3, dtype=dtype))
    # Light from +z.
    coeffs_z = coeffs.clone()
    coeffs_z[:, 2] = 0.5
    up_down = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]], dtype=dtype).expand(b, 2, 3)
    sz = sh_shading(up_down, coeffs_z)
    assert (sz[:, 0] > sz[:, 1]).all()
    torch.testing.assert_close(sz[:, 0], torch.full((b, 3), 1 + 0.5 * 2 / math.sqrt(3), dtype=dtype))
    # Per-channel coefficients and shade().
    coeffs_rgb = torch.randn(b, 9, 3, generator=gen(20), dtype=dtype)
    albedo = torch.rand(b, 6, 3, generator=gen(21), dtype=dtype)
    expected = torch.einsum("bnk,bkc->bnc", sh_basis(n), coeffs_rgb)
    torch.testing.assert_close(sh_shading(n, coeffs_rgb), expected, **tol(dtype))
    torch.testing.assert_close(shade(albedo, n, coeffs_rgb), albedo * expected, **tol(dtype))
    assert torch.equal(n, n_before) and torch.equal(coeffs, c_before)


def test_sh_gradcheck() -> None:
    n = torch.nn.functional.normalize(torch.randn(2, 4, 3, generator=gen(22), dtype=torch.float64), dim=-1)
    coeffs = torch.randn(2, 9, 3, generator=gen(23), dtype=torch.float64)
    albedo = torch.rand(2, 4, 3, generator=gen(24), dtype=torch.float64)
    assert gradcheck(sh_shading, (n.requires_grad_(True), coeffs.requires_grad_(True)))
    assert gradcheck(shade, (albedo.requires_grad_(True), n, coeffs))


# ------------------------------------------------------------------------------------------------------------ devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_smoke() -> None:
    dev = torch.device("cuda")
    w = torch.randn(3, 3, device=dev)
    r = axis_angle_to_matrix(w)
    assert r.device.type == "cuda"
    assert matrix_to_euler(euler_to_matrix(w)).device.type == "cuda"
    assert matrix_to_axis_angle(r).device.type == "cuda"
    v = torch.tensor(CUBE_V, device=dev)[None]
    assert vertex_normals(v, cube_faces().to(dev)).device.type == "cuda"
    cam = model_to_camera(v, r[:1], torch.zeros(1, 3, device=dev))
    box = box_from_points(cam[..., :2])
    assert crop_affine(box, 64).device.type == "cuda"
    assert image_to_crop(cam[..., :2], box, 64).device.type == "cuda"
    assert sh_shading(vertex_normals(v, cube_faces().to(dev)), torch.randn(1, 9, 3, device=dev)).device.type == "cuda"


@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_rotation_halves_the_angle_and_is_a_rotation(dtype: torch.dtype) -> None:
    from facerecon.geometry import mean_rotation

    a = torch.tensor([[0.0, 0.0, 0.2], [0.4, 0.0, 0.0]], dtype=dtype)  # axis-angle
    b = torch.tensor([[0.0, 0.0, 1.0], [-0.2, 0.0, 0.0]], dtype=dtype)
    r = mean_rotation(torch.stack([axis_angle_to_matrix(a), axis_angle_to_matrix(b)], dim=1))  # (2, 3, 3)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(r, axis_angle_to_matrix((a + b) / 2), atol=tol)  # same axis: the mean angle
    assert torch.allclose(torch.linalg.det(r), torch.ones(2, dtype=dtype), atol=tol)
    one = axis_angle_to_matrix(torch.tensor([[0.3, -0.5, 0.7]], dtype=dtype))
    assert torch.allclose(mean_rotation(one[:, None].expand(1, 3, 3, 3)), one, atol=tol)  # mean of copies


def test_mirror_rotation_flips_yaw_and_roll_and_mirrors_points() -> None:
    from facerecon.geometry import mirror_rotation

    angles = torch.tensor([[0.4, -0.2, 0.3], [-1.1, 0.5, -0.7]], dtype=torch.float64)
    r = euler_to_matrix(angles)
    m = mirror_rotation(r)
    assert torch.allclose(matrix_to_euler(m), angles * torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64))
    assert torch.allclose(mirror_rotation(m), r)
    # Rotating the mirrored points with M R M gives the mirror image of the rotated points.
    pts = torch.randn(2, 5, 3, dtype=torch.float64)
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose((pts * flip) @ m.transpose(1, 2), (pts @ r.transpose(1, 2)) * flip)


def test_sh_mirror_signs_mirror_the_shading() -> None:
    from facerecon.geometry import SH_MIRROR_X_SIGNS

    n = torch.nn.functional.normalize(torch.randn(2, 50, 3, dtype=torch.float64), dim=-1)
    coeffs = torch.randn(2, 9, 3, dtype=torch.float64)
    mirrored = coeffs * torch.tensor(SH_MIRROR_X_SIGNS, dtype=torch.float64)[:, None]
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(sh_shading(n * flip, mirrored), sh_shading(n, coeffs))
    assert not torch.allclose(sh_shading(n * flip, coeffs), sh_shading(n, coeffs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_procrustes_rotation_recovers_a_similarity_and_ignores_zero_weights(dtype: torch.dtype) -> None:
    from facerecon.geometry import procrustes_rotation

    gen = torch.Generator().manual_seed(0)
    src = torch.randn(2, 20, 3, generator=gen, dtype=dtype)
    rot = axis_angle_to_matrix(torch.tensor([[0.3, -1.1, 0.4], [2.5, 0.2, -0.3]], dtype=dtype))
    tgt = 2.5 * src @ rot.transpose(1, 2) + torch.tensor([4.0, -2.0, 7.0], dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.allclose(procrustes_rotation(src, tgt), rot, atol=tol)
    corrupt = tgt.clone()
    corrupt[:, :5] += 50.0 * torch.randn(2, 5, 3, generator=gen, dtype=dtype)
    w = torch.ones(2, 20, dtype=dtype)
    w[:, :5] = 0.0
    assert torch.allclose(procrustes_rotation(src, corrupt, w), rot, atol=tol)
    assert not torch.allclose(procrustes_rotation(src, corrupt), rot, atol=1e-2)
    # A mirrored target still gives a proper rotation (det +1), and one unbatched call works.
    r = procrustes_rotation(src[0], src[0] * torch.tensor([-1.0, 1.0, 1.0], dtype=dtype))
    assert torch.linalg.det(r).item() == pytest.approx(1.0, abs=tol)
    with pytest.raises(ValueError, match="weights"):
        procrustes_rotation(src, tgt, w[:, :3])
    with pytest.raises(ValueError, match=r"\(\.\.\., P, 3\)"):
        procrustes_rotation(src, tgt[..., :2])
