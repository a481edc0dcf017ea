"""The orientation test: quarter turns of crops, parameters, views and SH lighting; turned faces found and undone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facerecon.geometry import sh_basis, sh_quarter_turn, sh_shading, view_boxes
from facerecon.models.facerecon import SHIFT_TEST_VIEWS, turn_views

ASTRONAUT_BOX = [150.0, 60.0, 250.0, 170.0]


def _turn_points(points: torch.Tensor, turns: int, size: int) -> torch.Tensor:
    """Pixel positions after ``torch.rot90(image, turns, dims=(-2, -1))`` of a ``size`` x ``size`` image."""
    for _ in range(turns % 4):
        points = torch.stack([points[..., 1], (size - 1) - points[..., 0]], dim=-1)
    return points


def test_sh_quarter_turn_lights_the_turned_scene_alike():
    gen = torch.Generator().manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(200, 3, generator=gen, dtype=torch.float64), dim=-1)
    coeffs = torch.randn(4, 9, 3, generator=gen, dtype=torch.float64)
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    p = sh_quarter_turn(torch.tensor([0, 1, 2, -1]), dtype=torch.float64)
    for k, turns in enumerate((0, 1, 2, 3)):
        turned = normals @ torch.linalg.matrix_power(quarter, turns).T
        torch.testing.assert_close(sh_shading(turned[None], (p[k] @ coeffs[k])[None]),
                                   sh_shading(normals[None], coeffs[k][None]), rtol=0, atol=1e-12)
    torch.testing.assert_close(p[0], torch.eye(9, dtype=torch.float64))
    torch.testing.assert_close(p[1] @ p[3], torch.eye(9, dtype=torch.float64))  # -1 == 3 turns: the inverse
    # A light from +x (the basis' x term) turns to +y after one counter-clockwise turn.
    light = torch.zeros(9, dtype=torch.float64)
    light[3] = 1.0
    assert torch.equal(p[1] @ light, torch.eye(9, dtype=torch.float64)[1])
    assert sh_basis(normals).shape == (200, 9)


def test_turn_views_analytic_and_cycle():
    views = torch.tensor(SHIFT_TEST_VIEWS)
    one = turn_views(views, 1)
    torch.testing.assert_close(one[1], torch.tensor([1.0, 0.0, -0.07]))  # right -> up on screen
    torch.testing.assert_close(one[3], torch.tensor([1.0, 0.07, 0.0]))  # down -> right
    torch.testing.assert_close(turn_views(views, 4), views)
    torch.testing.assert_close(turn_views(turn_views(views, 3), 1), views)


def test_turned_view_boxes_cut_the_turned_crops(astronaut):
    from facerecon.inference.crop import crop_face

    size, w = 64, astronaut.shape[1]
    box = torch.tensor([ASTRONAUT_BOX], dtype=torch.float64)
    x0, y0, x1, y1 = ASTRONAUT_BOX
    turned_box = torch.tensor([[y0, (w - 1) - x1, y1, (w - 1) - x0]], dtype=torch.float64)
    turned_image = np.ascontiguousarray(np.rot90(astronaut, 1))
    views = torch.tensor(SHIFT_TEST_VIEWS)
    plain = view_boxes(box, views)[0].numpy()
    turned = view_boxes(turned_box, turn_views(views, 1))[0].numpy()
    unturned = view_boxes(turned_box, views)[0].numpy()
    for v in range(len(views)):
        expected = np.rot90(crop_face(astronaut, plain[v], size), 1).astype(int)
        diff = np.abs(crop_face(turned_image, turned[v], size).astype(int) - expected)
        assert diff.max() <= 4 and diff.mean() < 0.1  # resampling rounding only
        if v:  # the shifted views without the turn cut other crops
            assert np.abs(crop_face(turned_image, unturned[v], size).astype(int) - expected).mean() > 5


def test_rotate_parameters_turns_landmarks_keeps_colours_and_inverts(tiny_model):
    size = tiny_model.config.input_size
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        params, _ = tiny_model.regress_crops(torch.rand(3, 3, size, size, generator=gen), tiny_model.regressor())
        base = tiny_model.decode(params)
        for turns in (1, 2, 3, -1):
            k = torch.full((3,), turns)
            out = tiny_model.decode(tiny_model.rotate_parameters(params, k))
            torch.testing.assert_close(out.landmarks_2d, _turn_points(base.landmarks_2d, turns, size),
                                       rtol=0, atol=1e-3)
            torch.testing.assert_close(out.colors, base.colors, rtol=0, atol=1e-5)
            back = tiny_model.rotate_parameters(tiny_model.rotate_parameters(params, k), -k)
            torch.testing.assert_close(back.rotation, params.rotation, rtol=0, atol=1e-6)
            torch.testing.assert_close(back.lighting, params.lighting, rtol=0, atol=1e-6)
        mixed = tiny_model.rotate_parameters(params, torch.tensor([0, 1, 2]))
        torch.testing.assert_close(mixed.rotation[0], params.rotation[0], rtol=0, atol=0)
        assert not torch.allclose(mixed.rotation[1], params.rotation[1])


@pytest.fixture(scope="module")
def default_model(ict_dir):
    from facerecon.hub import load_model

    return load_model(None).eval()


@pytest.fixture(scope="module")
def face_crop(default_model, astronaut):
    from facerecon.inference.crop import crop_face, square_box

    x0, y0, x1, y1 = ASTRONAUT_BOX
    box = square_box((0.5 * (x0 + x1), 0.5 * (y0 + y1)), 1.1 * max(x1 - x0, y1 - y0))
    crop = crop_face(astronaut, box, default_model.config.input_size)
    return torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture
def loose_rule(monkeypatch):
    """The orientation rule at ratio 0.5 (the default is 0.4).

    The default model (v41) reads this photo's face turned by a quarter turn with 0.45 times the upright crop's
    flip disagreement (0.0211 / 0.0473): the default rule keeps such a crop as it is (README: it recovers 85-89 % of
    the validation crops turned by quarter turns). The tests below check the turning and mapping back, so they
    loosen the rule enough for this face.
    """
    import functools

    import facerecon.models.facerecon as fr

    monkeypatch.setattr(fr, "orientation_turns", functools.partial(fr.orientation_turns, ratio=0.5))


@pytest.mark.parametrize("flip_test", [False, True])
def test_orientation_test_turns_a_sideways_face_upright(default_model, face_crop, flip_test, loose_rule):
    size = default_model.config.input_size
    with torch.no_grad():
        upright = default_model(face_crop, flip_test=flip_test, orientation_test=True)
        plain = default_model(face_crop, flip_test=flip_test)
        torch.testing.assert_close(upright.landmarks_2d, plain.landmarks_2d, rtol=0, atol=0)  # upright: untouched
        for turns in (1, 3):  # (crops are not tried upside down: ORIENTATION_TURNS)
            crops = torch.rot90(face_crop, turns, dims=(-2, -1))
            expected = _turn_points(plain.landmarks_2d, turns, size)
            out = default_model(crops, flip_test=flip_test, orientation_test=True)
            torch.testing.assert_close(out.landmarks_2d, expected, rtol=0, atol=2e-3)
            torch.testing.assert_close(out.attention, torch.rot90(plain.attention, turns, dims=(-2, -1)),
                                       rtol=0, atol=1e-5)
            without = default_model(crops, flip_test=flip_test)
            assert (without.landmarks_2d - expected).norm(dim=-1).mean() > 0.05 * size


def test_orientation_test_with_views_and_in_a_batch(default_model, face_crop, loose_rule):
    """Views turn with the face; faces in one batch get their own turns."""
    views = torch.tensor(SHIFT_TEST_VIEWS)
    stack = face_crop[:, None].expand(-1, len(views), -1, -1, -1)  # all views alike: only the bookkeeping counts
    batch = torch.cat([stack, torch.rot90(stack, 1, dims=(-2, -1))])
    size = default_model.config.input_size
    with torch.no_grad():
        out = default_model(batch, flip_test=True, views=turn_views(views, 0), orientation_test=True)
        ref = default_model(stack, flip_test=True, views=views)
        torch.testing.assert_close(out.landmarks_2d[0], ref.landmarks_2d[0], rtol=0, atol=1e-3)
        # The turned face's views were regressed upright with views turned back: its merged shifts differ from the
        # plain ones only by that turn, so its landmarks are the upright merge turned.
        regressor = default_model.regressor()
        turns = default_model.crop_orientation(batch[:, 0], regressor, *_pair(default_model, batch[:, 0], regressor))
        assert turns.tolist() == [0, 3]
        turned_ref = default_model(stack, flip_test=True, views=turn_views(views, 3))
        torch.testing.assert_close(out.landmarks_2d[1], _turn_points(turned_ref.landmarks_2d[0], 1, size),
                                   rtol=0, atol=2e-3)


def _pair(model, crops, regressor):
    p, _ = regressor(torch.cat([crops, crops.flip(-1)]))
    n = crops.shape[0]
    return p[:n], p[n:]


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_unturn_box_maps_a_pixel_back(turns):
    from facerecon.inference.pipeline import unturn_box

    image = np.zeros((10, 20), dtype=np.uint8)
    image[3, 7] = 1  # x = 7, y = 3
    y, x = np.argwhere(np.rot90(image, turns))[0]
    box = unturn_box(np.array([x - 0.5, y - 0.5, x + 1.5, y + 0.5]), turns, image.shape)
    wide = {0: [6.5, 2.5, 8.5, 3.5], 1: [6.5, 2.5, 7.5, 4.5], 2: [5.5, 2.5, 7.5, 3.5], 3: [6.5, 1.5, 7.5, 3.5]}
    np.testing.assert_allclose(box, wide[turns])  # a box 2 px wide in the turned image, around the pixel


@pytest.mark.parametrize("turns", [1, 3])
def test_pipeline_finds_a_sideways_face(default_model, astronaut, turns):
    from facerecon.errors import NoFaceError

    upright = default_model.reconstruct(astronaut)[0]
    photo = np.ascontiguousarray(np.rot90(astronaut, turns))
    with pytest.raises(NoFaceError):
        default_model.reconstruct(photo, orientation_test=False)
    face = default_model.reconstruct(photo)[0]
    expected = torch.from_numpy(upright.landmarks.copy())
    for j in range(turns):  # pixel (x, y) of an image of width W goes to (y, W - 1 - x) per turn
        width = astronaut.shape[1] if j % 2 == 0 else astronaut.shape[0]
        expected = torch.stack([expected[:, 1], (width - 1) - expected[:, 0]], dim=-1)
    np.testing.assert_allclose(face.landmarks, expected.numpy(), atol=0.5)
    assert abs(face.roll - upright.roll) == pytest.approx(90, abs=5)
    assert face.detection is not None
    assert face.box[2] - face.box[0] == pytest.approx(upright.box[2] - upright.box[0], abs=0.1)


def test_orientation_turns_rule():
    from facerecon.models.facerecon import orientation_turns

    d = torch.tensor([[0.01, 0.001, 0.001, 0.001],   # below the gate: kept
                      [0.10, 0.08, 0.029, 0.09],     # best turn 2, below the gate and 0.29 x its own: turned
                      [0.10, 0.06, 0.07, 0.05],      # best turn 3 at 0.5 x: not below the ratio, kept
                      [0.10, 0.02, 0.01, 0.025],     # best turn 2; best quarter turn 1 (0.2 x)
                      [0.20, 0.05, 0.04, 0.06],      # best turn 2 at 0.2 x, but above the gate itself: kept
                      [0.044, 0.0186, 0.12, 0.08]])  # best turn 1 at 0.42 x: not below the ratio, kept
    assert orientation_turns(d).tolist() == [0, 0, 0, 1, 0, 0]  # default: quarter turns only
    assert orientation_turns(d, turns=(1, 2, 3)).tolist() == [0, 2, 0, 2, 0, 0]
    assert orientation_turns(d, gate=0.005, ratio=0.6, turns=(1, 2, 3)).tolist() == [1, 0, 0, 0, 0, 0]
    assert orientation_turns(d, gate=0.1, ratio=0.6, turns=(1, 2, 3)).tolist() == [0, 0, 0, 0, 2, 0]
    assert orientation_turns(d, gate=0.1, ratio=0.6).tolist() == [0, 0, 0, 0, 1, 0]
    inf = d.clone()
    inf[:, 2] = float("inf")  # what crop_orientation passes for the turn it does not try
    assert orientation_turns(inf).tolist() == orientation_turns(d).tolist()
    with pytest.raises(ValueError, match="turns"):
        orientation_turns(d, turns=(0, 1))
