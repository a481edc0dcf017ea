from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from facerecon.geometry import euler_to_matrix, model_to_camera, sh_shading, vertex_normals, weak_perspective_project
from facerecon.render import (
    Fragments,
    RenderOutput,
    interpolate,
    rasterize,
    render,
    sample_image,
    to_screen,
    vertex_visibility,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def covered(screen: torch.Tensor, faces: torch.Tensor, h: int, w: int) -> set[tuple[int, int]]:
    """Pixels (column, row) covered in batch item 0."""
    fr = rasterize(screen, faces, h, w)
    rows, cols = torch.nonzero(fr.mask[0], as_tuple=True)
    return {(int(c), int(r)) for r, c in zip(rows, cols, strict=True)}


def reference_rasterize(screen: torch.Tensor, faces: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Brute force over all (pixel, triangle) pairs, strict inside test, float64: (B, H, W) face index."""
    s = screen.double()
    py, px = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    p = torch.stack([px, py], -1).reshape(-1, 1, 2)  # (HW, 1, 2)
    out = []
    for sb in s:
        tri = sb[faces]  # (F, 3, 3)
        a, b, c = tri[None, :, 0, :2], tri[None, :, 1, :2], tri[None, :, 2, :2]

        def cross(u, v, q):
            return (v[..., 0] - u[..., 0]) * (q[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (q[..., 0] - u[..., 0])

        w0, w1, w2 = cross(b, c, p), cross(c, a, p), cross(a, b, p)
        area = cross(a, b, c)
        inside = ((w0 > 0) & (w1 > 0) & (w2 > 0)) | ((w0 < 0) & (w1 < 0) & (w2 < 0))
        z = (w0 * tri[None, :, 0, 2] + w1 * tri[None, :, 1, 2] + w2 * tri[None, :, 2, 2]) / area
        z = torch.where(inside, z, torch.inf)
        best = z.argmin(1)
        out.append(torch.where(torch.isfinite(z.amin(1)), best, -1).reshape(h, w))
    return torch.stack(out)


def grid_mesh(n: int, lo: float, hi: float, jitter: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (n+1)^2-vertex square grid over [lo, hi]^2 with jittered interior vertices, 2 n^2 triangles."""
    t = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    y, x = torch.meshgrid(t, t, indexing="ij")
    xy = torch.stack([x, y], -1)
    noise = (torch.rand(n + 1, n + 1, 2, generator=gen(seed), dtype=torch.float64) - 0.5) * jitter
    noise[0], noise[-1], noise[:, 0], noise[:, -1] = 0, 0, 0, 0
    xy = (xy + noise).reshape(-1, 2)
    screen = torch.cat([xy, torch.ones(len(xy), 1, dtype=torch.float64)], -1)[None]
    idx = torch.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1), idx[1:, 1:].reshape(-1), idx[1:, :-1].reshape(-1)
    faces = torch.cat([torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)])
    return screen, faces


def per_triangle_counts(screen: torch.Tensor, faces: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """How many triangles cover each pixel, each triangle rasterised alone: (H, W)."""
    total = torch.zeros(h, w, dtype=torch.long)
    for f in faces:
        total += rasterize(screen, f[None], h, w).mask[0].long()
    return total


# ----------------------------------------------------------------------------------------------- coverage
def test_to_screen_matches_weak_perspective():
    cam = torch.randn(2, 5, 3, generator=gen(1), dtype=torch.float64) * 50
    s = torch.tensor([0.7, 1.3], dtype=torch.float64)
    c = torch.tensor([[31.5, 30.0], [10.0, 12.0]], dtype=torch.float64)
    scr = to_screen(cam, s, c)
    torch.testing.assert_close(scr[..., :2], weak_perspective_project(cam, s, c))
    torch.testing.assert_close(scr[..., 2], s[:, None] * cam[..., 2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_integer_triangle_covers_expected_pixels(dtype):
    # Right triangle (0,0), (4,0), (0,4): centres on the left / top edges are in, on the hypotenuse out.
    screen = torch.tensor([[[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 4.0, 1.0]]], dtype=dtype)
    expected = {(i, j) for i in range(5) for j in range(5) if i + j < 4}
    for faces in ([[0, 1, 2]], [[0, 2, 1]], [[2, 0, 1]]):  # both windings, rotated order
        assert covered(screen, torch.tensor(faces), 8, 8) == expected
    # Mirrored: (4,0), (0,0), (4,4): the right edge x = 4 is excluded, the top edge y = 0 included.
    screen = torch.tensor([[[4.0, 0.0, 1.0], [0.0, 0.0, 1.0], [4.0, 4.0, 1.0]]], dtype=dtype)
    expected = {(i, j) for i in range(4) for j in range(5) if j <= i}
    assert covered(screen, torch.tensor([[0, 1, 2]]), 8, 8) == expected


def test_non_integer_triangle_covers_expected_pixels_and_barycentrics():
    verts = [(1.3, 0.7), (7.6, 2.2), (3.1, 6.4)]
    screen = torch.tensor([[[x, y, 2.0] for x, y in verts]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])

    def side(a, b, p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    expected = set()
    for i in range(10):
        for j in range(10):
            s = [side(verts[k], verts[(k + 1) % 3], (i, j)) for k in range(3)]
            assert min(abs(x) for x in s) > 1e-6  # no centre on an edge: the analytic set is unambiguous
            if all(x > 0 for x in s) or all(x < 0 for x in s):
                expected.add((i, j))
    assert len(expected) > 10
    assert covered(screen, faces, 10, 10) == expected
    assert covered(screen.float(), faces, 10, 10) == expected

    fr = rasterize(screen, faces, 10, 10)
    xy = interpolate(screen[..., :2], faces, fr)  # (1, H, W, 2)
    rows, cols = torch.nonzero(fr.mask[0], as_tuple=True)
    torch.testing.assert_close(xy[0, rows, cols], torch.stack([cols, rows], -1).double())
    assert torch.all(fr.bary[fr.mask] >= 0) and torch.allclose(fr.bary[fr.mask].sum(-1), torch.ones(len(rows),
                                                                                                     dtype=torch.float64))
    assert torch.all(fr.bary[~fr.mask] == 0) and torch.all(fr.face_index[~fr.mask] == -1)
    torch.testing.assert_close(fr.depth[fr.mask], torch.full((len(rows),), 2.0, dtype=torch.float64))
    assert torch.all(torch.isinf(fr.depth[~fr.mask]))


def test_nearer_triangle_wins_regardless_of_order():
    screen = torch.tensor([[[1.2, 1.1, 5.0], [12.7, 2.3, 5.0], [4.4, 12.2, 5.0],  # far
                            [2.5, 0.6, 1.0], [13.1, 9.6, 3.0], [0.3, 8.9, 2.0]]])  # near (tilted)
    for faces in (torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[3, 4, 5], [0, 1, 2]])):
        fr = rasterize(screen, faces, 14, 14)
        near = int((faces[:, 0] == 3).nonzero())
        alone = [rasterize(screen, faces[k:k + 1], 14, 14).mask[0] for k in range(2)]
        both = alone[0] & alone[1]
        assert both.sum() > 10
        assert torch.all(fr.face_index[0][both] == near)
        assert torch.equal(fr.mask[0], alone[0] | alone[1])
        assert torch.all(fr.depth[0][both] <= 3.0)


def test_interpenetrating_triangles_split_by_depth():
    # Two triangles crossing each other: each wins where it is nearer.
    screen = torch.tensor([[[0.2, 0.3, 0.0], [15.6, 0.4, 10.0], [7.9, 15.7, 5.0],
                            [0.1, 0.6, 10.0], [15.8, 0.2, 0.0], [8.3, 15.4, 5.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    fr = rasterize(screen, faces, 16, 16)
    ref = reference_rasterize(screen, faces, 16, 16)
    assert torch.equal(fr.face_index, ref)
    assert set(fr.face_index[fr.mask].tolist()) == {0, 1}


def test_shared_edge_square_has_no_holes_or_double_cover():
    # Integer corners: pixel centres lie exactly on every edge, the diagonal and the vertices.
    screen = torch.tensor([[[2.0, 1.0, 1.0], [9.0, 1.0, 1.0], [9.0, 8.0, 1.0], [2.0, 8.0, 1.0]]])
    for faces in (torch.tensor([[0, 1, 2], [0, 2, 3]]), torch.tensor([[1, 2, 3], [1, 3, 0]]),
                  torch.tensor([[0, 2, 1], [3, 2, 0]])):
        counts = per_triangle_counts(screen, faces, 12, 12)
        expected = torch.zeros(12, 12, dtype=torch.long)
        expected[1:8, 2:9] = 1  # half-open [2, 9) x [1, 8)
        assert torch.equal(counts, expected)
        assert torch.equal(rasterize(screen, faces, 12, 12).mask[0], expected.bool())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("jitter", [0.0, 1.7])
def test_jittered_grid_mesh_is_watertight(dtype, jitter):
    # A 5x5-cell grid on [1, 16]^2: integer vertices (many exact ties) or jittered non-integer interior ones.
    screen, faces = grid_mesh(5, 1.0, 16.0, jitter, seed=3)
    counts = per_triangle_counts(screen.to(dtype), faces, 18, 18)
    expected = torch.zeros(18, 18, dtype=torch.long)
    expected[1:16, 1:16] = 1
    assert torch.equal(counts, expected)


def test_offscreen_and_degenerate_triangles_cover_nothing():
    faces = torch.tensor([[0, 1, 2]])
    off = torch.tensor([[[20.0, 3.0, 1.0], [30.0, 3.0, 1.0], [25.0, 9.0, 1.0]]])
    behind_left = torch.tensor([[[-9.0, -3.0, 1.0], [-1.0, -3.0, 1.0], [-5.0, 5.0, 1.0]]])
    line = torch.tensor([[[1.0, 1.0, 1.0], [5.0, 5.0, 1.0], [3.0, 3.0, 1.0]]])  # zero area, on pixel centres
    point = torch.tensor([[[3.0, 3.0, 1.0], [3.0, 3.0, 1.0], [3.0, 3.0, 1.0]]])
    for screen in (off, behind_left, line, point):
        fr = rasterize(screen, faces, 8, 8)
        assert not fr.mask.any() and torch.all(fr.face_index == -1)
        out = render(screen, faces, torch.rand(1, 3, 3), 8, 8)
        assert torch.all(out.image == 0) and torch.isfinite(out.depth).all()
    # A triangle much larger than the image is clipped to it; non-finite vertices are skipped.
    huge = torch.tensor([[[-1e6, -1e6, 1.0], [1e6, -1e6, 1.0], [0.0, 1e6, 1.0]]])
    assert rasterize(huge, faces, 8, 8).mask.all()
    overflow = torch.tensor([[[-1e30, -1e30, 1.0], [1e30, -1e30, 1.0], [0.0, 1e30, 1.0]]])
    assert torch.isfinite(rasterize(overflow, faces, 8, 8).bary).all()
    nan = torch.tensor([[[float("nan"), 0.0, 1.0], [5.0, 0.0, 1.0], [0.0, 5.0, 1.0]]])
    assert not rasterize(nan, faces, 8, 8).mask.any()


def test_partially_offscreen_triangle_is_clipped():
    screen = torch.tensor([[[-5.5, -4.5, 1.0], [20.5, -4.5, 1.0], [-5.5, 21.5, 1.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    expected = {(i, j) for i in range(10) for j in range(10) if (i + 5.5) + (j + 4.5) < 26}
    assert covered(screen, faces, 10, 10) == expected


def test_matches_brute_force_reference_with_chunking_and_batch():
    g = gen(7)
    b, nf, h, w = 2, 40, 19, 23
    screen = torch.rand(b, 3 * nf, 3, generator=g, dtype=torch.float64)
    screen[..., 0] = screen[..., 0] * 30 - 4
    screen[..., 1] = screen[..., 1] * 26 - 4
    screen[..., 2] = screen[..., 2] * 10 - 5  # negative depths too
    faces = torch.arange(3 * nf).reshape(nf, 3)
    ref = reference_rasterize(screen, faces, h, w)
    for max_pairs in (1 << 19, 97, 5):
        fr = rasterize(screen, faces, h, w, max_pairs=max_pairs)
        assert torch.equal(fr.face_index, ref)
        assert torch.all(fr.bary[fr.mask] >= -1e-12) and torch.isfinite(fr.bary).all()
        fr32 = rasterize(screen.float(), faces, h, w, max_pairs=max_pairs)
        assert (fr32.face_index != ref).float().mean() < 0.01  # float32: at most rare near-edge/near-tie flips
    # Interpolating the vertex positions gives back the pixel centres, in every batch item; the many-channel path
    # (C > 4) agrees with the per-channel one.
    xy = interpolate(screen[..., :2], faces, fr)
    bi, rows, cols = torch.nonzero(fr.mask, as_tuple=True)
    torch.testing.assert_close(xy[bi, rows, cols], torch.stack([cols, rows], -1).double())
    attrs = torch.rand(b, 3 * nf, 6, generator=g, dtype=torch.float64)
    halves = [interpolate(attrs[..., :3], faces, fr), interpolate(attrs[..., 3:], faces, fr)]
    torch.testing.assert_close(interpolate(attrs, faces, fr), torch.cat(halves, -1))


def test_backface_culling():
    # Counter-clockwise in the view frame (y up) = clockwise on screen (y down): front-facing.
    front = torch.tensor([[[1.0, 6.0, 1.0], [6.0, 6.0, 1.0], [1.0, 1.0, 1.0]]])
    faces = torch.tensor([[0, 1, 2]])
    assert rasterize(front, faces, 8, 8, cull_backfaces=True).mask.any()
    assert not rasterize(front, faces.flip(1), 8, 8, cull_backfaces=True).mask.any()
    assert rasterize(front, faces.flip(1), 8, 8).mask.any()


def test_empty_inputs():
    fr = rasterize(torch.zeros(2, 0, 3), torch.zeros(0, 3, dtype=torch.long), 4, 5)
    assert fr.face_index.shape == (2, 4, 5) and not fr.mask.any()
    assert fr.bary.shape == (2, 4, 5, 3) and fr.depth.shape == (2, 4, 5)


# ----------------------------------------------------------------------------------------------- render + gradients
def test_render_composites_over_background_and_normals():
    screen = torch.tensor([[[1.2, 1.1, 5.0], [12.7, 2.3, 5.0], [4.4, 12.2, 5.0]]])
    faces = torch.tensor([[0, 1, 2]])
    colors = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    normals = torch.tensor([[[0.0, 0.0, 1.0], [0.6, 0.0, 0.8], [0.0, 0.6, 0.8]]])
    bg = torch.full((1, 3, 14, 14), 0.25)
    out = render(screen, faces, colors, 14, 14, background=bg, normals=normals)
    assert isinstance(out, RenderOutput) and isinstance(out.fragments, Fragments)
    assert out.image.shape == (1, 3, 14, 14) and out.mask.shape == (1, 1, 14, 14) and out.depth.shape == (1, 1, 14, 14)
    m = out.mask[0, 0].bool()
    assert torch.all(out.image[0][:, ~m] == 0.25)
    torch.testing.assert_close(out.image[0][:, m].sum(0), torch.ones(int(m.sum())))  # barycentric blend of RGB
    torch.testing.assert_close(out.depth[0, 0][m], torch.full((int(m.sum()),), 5.0))
    assert torch.all(out.depth[0, 0][~m] == 0)
    torch.testing.assert_close(out.normals[0].norm(dim=0)[m], torch.ones(int(m.sum())))
    assert torch.all(out.normals[0][:, ~m] == 0)
    plain = render(screen, faces, colors, 14, 14)
    assert plain.normals is None and torch.all(plain.image[0][:, ~m] == 0)


def _gradcheck_scene():
    # Two triangles sharing an edge plus a far one partly hidden; vertices away from pixel centres.
    screen = torch.tensor([[[1.3, 1.2, 2.0], [8.6, 1.7, 2.5], [7.9, 8.4, 3.0], [1.6, 7.7, 2.2],
                            [3.2, 2.9, 9.0], [11.4, 4.1, 9.0], [5.3, 10.6, 9.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6]])
    colors = torch.rand(1, 7, 3, generator=gen(2), dtype=torch.float64)
    return screen, faces, colors


def test_gradcheck_colors_and_background():
    screen, faces, colors = _gradcheck_scene()
    bg = torch.rand(1, 3, 12, 12, generator=gen(3), dtype=torch.float64)
    colors.requires_grad_(True)
    bg.requires_grad_(True)
    assert gradcheck(lambda c: render(screen, faces, c, 12, 12, background=bg).image, (colors,))
    assert gradcheck(lambda c, b: render(screen, faces, c, 12, 12, background=b).image, (colors, bg), fast_mode=True)


def test_gradcheck_vertex_positions_with_fixed_visibility():
    screen, faces, colors = _gradcheck_scene()
    screen.requires_grad_(True)

    def fn(s):
        out = render(s, faces, colors, 12, 12)
        return out.image, out.depth

    # Perturbations of 1e-6 px change no coverage here (no pixel centre within 1e-6 of an edge).
    assert gradcheck(fn, (screen,), eps=1e-6, atol=1e-6)
    # And the gradient is actually non-zero: moving vertices shifts the interpolated colours.
    (g,) = torch.autograd.grad(fn(screen)[0].sum(), screen)
    assert g[0, :4, :2].abs().sum() > 0


def test_gradcheck_sh_lighting_pipeline():
    # colors = albedo * sh_shading(normals, coeffs), rendered; gradient w.r.t. the SH coefficients.
    screen, faces, _ = _gradcheck_scene()
    normals = torch.nn.functional.normalize(torch.randn(1, 7, 3, generator=gen(4), dtype=torch.float64), dim=-1)
    albedo = torch.rand(1, 7, 3, generator=gen(5), dtype=torch.float64)
    coeffs = torch.zeros(1, 9, 3, dtype=torch.float64)
    coeffs[:, 0] = 0.8
    coeffs = (coeffs + 0.1 * torch.randn(1, 9, 3, generator=gen(6), dtype=torch.float64)).requires_grad_(True)
    assert gradcheck(lambda c: render(screen, faces, albedo * sh_shading(normals, c), 12, 12).image, (coeffs,))


def test_interpolate_is_nan_free_with_degenerate_winner_neighbours():
    screen = torch.tensor([[[1.0, 1.0, 1.0], [5.0, 5.0, 1.0], [3.0, 3.0, 1.0],
                            [0.5, 0.5, 2.0], [6.5, 0.5, 2.0], [0.5, 6.5, 2.0]]], dtype=torch.float64,
                          requires_grad=True)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])  # face 0 degenerate: background pixels gather it
    colors = torch.rand(1, 6, 3, dtype=torch.float64, requires_grad=True)
    out = render(screen, faces, colors, 8, 8)
    (out.image.sum() + out.depth.sum()).backward()
    assert torch.isfinite(screen.grad).all() and torch.isfinite(colors.grad).all()
    assert torch.isfinite(out.fragments.bary).all()


# ----------------------------------------------------------------------------------------------- sampling / visibility
def test_sample_image_at_pixel_centres_is_exact():
    img = torch.rand(2, 3, 5, 7, generator=gen(8))
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    pts = torch.stack([cols, rows], -1).reshape(1, -1, 2).float().expand(2, -1, -1)
    out = sample_image(img, pts)
    assert out.shape == (2, 35, 3)
    torch.testing.assert_close(out, img.reshape(2, 3, -1).transpose(1, 2), atol=1e-6, rtol=0)
    # Half way between pixel (1, 2) and (2, 2): the mean of the two.
    mid = sample_image(img, torch.tensor([[[1.5, 2.0]], [[1.5, 2.0]]]))
    torch.testing.assert_close(mid[:, 0], 0.5 * (img[:, :, 2, 1] + img[:, :, 2, 2]))


def uv_sphere(n_lat: int = 16, n_lon: int = 32, radius: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed UV sphere in the model frame (+z = front pole), outward counter-clockwise faces."""
    verts = [(0.0, 0.0, radius)]
    for i in range(1, n_lat):
        th = math.pi * i / n_lat
        for j in range(n_lon):
            ph = 2 * math.pi * j / n_lon
            verts.append((radius * math.sin(th) * math.cos(ph), radius * math.sin(th) * math.sin(ph),
                          radius * math.cos(th)))
    verts.append((0.0, 0.0, -radius))
    faces = []

    def ring(i, j):
        return 1 + (i - 1) * n_lon + j % n_lon

    for j in range(n_lon):
        faces.append((0, ring(1, j), ring(1, j + 1)))
        faces.append((len(verts) - 1, ring(n_lat - 1, j + 1), ring(n_lat - 1, j)))
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j + 1), ring(i + 1, j)
            faces += [(a, d, c), (a, c, b)]
    return torch.tensor(verts)[None], torch.tensor(faces)


def test_vertex_visibility_on_sphere():
    verts, faces = uv_sphere()
    normals = vertex_normals(verts, faces)
    assert (normals[0, 0] @ torch.tensor([0.0, 0.0, 1.0])) > 0.99  # outward, counter-clockwise faces
    eye = torch.eye(3)[None]
    cam = model_to_camera(verts, eye, torch.zeros(1, 3))
    screen = to_screen(cam, torch.tensor([2.0]), torch.tensor([[31.5, 31.5]]))
    fr = rasterize(screen, faces, 64, 64)
    vis = vertex_visibility(screen, faces, fr)
    assert vis[0, 0] and not vis[0, -1]  # front pole seen, back pole hidden
    # Without normals, the z-buffer alone hides the back hemisphere (except the silhouette band).
    z = verts[0, :, 2]
    assert vis[0][z > 2.0].all() and not vis[0][z < -2.0].any()
    vis_n = vertex_visibility(screen, faces, fr, normals=normals)
    assert vis_n[0][z > 0.5].all() and not vis_n[0][z < -0.5].any()
    # Front-facing triangles only: the silhouette is the same with culling.
    fr_c = rasterize(screen, faces, 64, 64, cull_backfaces=True)
    assert torch.equal(fr_c.mask, fr.mask)
    # Outside the image: never visible.
    shifted = screen + torch.tensor([100.0, 0.0, 0.0])
    assert not vertex_visibility(shifted, faces, rasterize(shifted, faces, 64, 64)).any()


def test_vertex_visibility_real_face_frontal_and_profile(ict_dir):
    from facerecon.morphable.ict import load_morphable_data

    data = load_morphable_data(ict_dir)
    verts, faces = data.mean[None], data.faces
    nose = int(data.landmark_index[30])
    size = 128
    scale = torch.tensor([size / 300.0])
    centre = torch.full((1, 2), (size - 1) / 2)

    def run(yaw_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
        rot = euler_to_matrix(torch.tensor([[math.radians(yaw_deg), 0.0, 0.0]]))
        screen = to_screen(model_to_camera(verts, rot, torch.zeros(1, 3)), scale, centre)
        fr = rasterize(screen, faces, size, size)
        normals = vertex_normals(verts, faces) @ rot.transpose(1, 2)
        return vertex_visibility(screen, faces, fr)[0], vertex_visibility(screen, faces, fr, normals=normals)[0]

    vis, vis_n = run(0.0)
    assert vis[nose] and vis_n[nose]
    assert vis.float().mean() > 0.5
    # Yaw +90 deg turns the face towards image left: the subject's right cheek (model x < 0) is the far side.
    vis, vis_n = run(90.0)
    x, z = verts[0, :, 0], verts[0, :, 2]
    far_cheek = (x < -45.0) & (z > 20.0)
    assert far_cheek.sum() > 50
    assert vis[far_cheek].float().mean() < 0.05
    assert not vis_n[far_cheek].any()
    near_cheek = (x > 45.0) & (z > 20.0)
    assert vis_n[near_cheek].float().mean() > 0.8


def test_render_tiny_model_mean_face(tiny_model):
    size = tiny_model.config.input_size
    with torch.no_grad():
        out = tiny_model(torch.rand(1, 3, size, size, generator=gen(9)))
    principal = torch.full((1, 2), (size - 1) / 2.0)
    screen = to_screen(out.vertices, out.params.scale, principal)
    faces = tiny_model.morphable.faces
    img = render(screen, faces, out.colors, size, size, normals=out.normals)
    mask = img.mask[0, 0].bool()
    lmk = out.landmarks_2d[0].round().long()
    inner = torch.cat([lmk[17:36], lmk[48:]])  # brows, nose, mouth (eye landmarks border the mesh's eye holes)
    assert mask[inner[:, 1], inner[:, 0]].all()
    nose = lmk[30]
    assert mask[nose[1], nose[0]]
    assert not mask[0, 0] and not mask[0, -1]
    assert torch.isfinite(img.image).all()
    # The nose tip is the nearest point around it; normals face the camera there.
    assert img.normals[0, 2, nose[1], nose[0]] > 0.5
    vis = vertex_visibility(screen, faces, img.fragments, normals=out.normals)
    assert vis[0, tiny_model.morphable.landmark_index[30]]
    # Sampling the rendered image at the projected visible vertices returns their colours (approximately).
    pts = screen[..., :2]
    sampled = sample_image(img.image, pts)
    err = (sampled - out.colors).abs().amax(-1)[vis]
    assert err.median() < 0.05
