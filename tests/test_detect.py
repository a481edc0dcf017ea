"""Tests for facerecon.inference.detect (Haar-cascade face detector)."""

from __future__ import annotations

import csv
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from facerecon.inference import detect as detect_mod
from facerecon.inference.detect import FaceBox, FaceDetector, detect_faces, support_to_score

skdata = pytest.importorskip("skimage.data")

AFLW_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "aflw2000-3d-dev"
# The astronaut's face (skimage.data.astronaut, 512x512): checked by drawing the detection; it spans about
# x 175-275, y 60-170 (hairline to chin).
ASTRONAUT_FACE_CENTER = (225.0, 115.0)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut())


def _near(center: tuple[float, float], target: tuple[float, float], tol: float) -> bool:
    return abs(center[0] - target[0]) <= tol and abs(center[1] - target[1]) <= tol


def test_astronaut_one_face(detector, astronaut):
    faces = detector(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert isinstance(face, FaceBox)
    assert _near(face.center, ASTRONAUT_FACE_CENTER, 25), face
    assert 70 <= face.width <= 160 and 70 <= face.height <= 160
    assert face.source == "frontal"
    assert 0.45 <= face.score < 1.0


def test_astronaut_mirrored(detector, astronaut):
    faces = detector(np.ascontiguousarray(astronaut[:, ::-1]))
    assert len(faces) == 1
    # Mirroring maps x -> (W - 1) - x in pixel-centre coordinates.
    assert _near(faces[0].center, (511 - ASTRONAUT_FACE_CENTER[0], ASTRONAUT_FACE_CENTER[1]), 25), faces[0]


def test_boxes_in_original_coordinates_after_downscale(astronaut):
    base = FaceDetector()(astronaut)[0]
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    faces = FaceDetector(max_side=640)(big)
    assert len(faces) == 1
    # Box edges scale about the image edge: x_big = (x + 0.5) * 2 - 0.5.
    expected = (base.as_array() + 0.5) * 2.0 - 0.5
    assert np.allclose(faces[0].as_array(), expected, atol=0.12 * base.width * 2)


def test_tilted_face_found_by_rotated_pass(detector, astronaut):
    # Rotate the image by +30 deg (counter-clockwise as displayed) about the face: the face is then tilted
    # counter-clockwise, which the detector reports as a negative roll.
    rot = cv2.getRotationMatrix2D(ASTRONAUT_FACE_CENTER, 30, 1.0)
    tilted = cv2.warpAffine(astronaut, rot, (512, 512), borderMode=cv2.BORDER_REFLECT)
    faces = detector(tilted)
    assert faces, "tilted face not found"
    assert _near(faces[0].center, ASTRONAUT_FACE_CENTER, 30), faces[0]
    assert faces[0].roll_deg < 0


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((300, 300, 3), np.uint8),
        np.full((240, 320, 3), 200, np.uint8),
        np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8),
    ],
    ids=["black", "flat", "noise"],
)
def test_no_face(detector, image):
    assert detector(image) == []


def test_photo_without_face(detector):
    assert detector(np.ascontiguousarray(skdata.coffee())) == []


def test_tiny_image_gives_no_faces(detector):
    assert detector(np.zeros((20, 200, 3), np.uint8)) == []


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64, 1), np.uint8),
    ],
    ids=["gray", "rgba", "float", "hw1"],
)
def test_rejects_non_rgb_uint8(detector, bad):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8") as info:
        detector(bad)
    assert str(bad.shape) in str(info.value)


def test_rejects_non_array(detector):
    with pytest.raises(ValueError, match="list"):
        detector([[0, 0, 0]])


def test_facebox_properties():
    box = FaceBox(10.0, 20.0, 50.0, 100.0, score=0.5, source="frontal")
    assert box.width == 40.0 and box.height == 80.0 and box.area == 3200.0
    assert box.center == (30.0, 60.0)
    arr = box.as_array()
    assert arr.shape == (4,) and arr.dtype == np.float64
    assert arr.tolist() == [10.0, 20.0, 50.0, 100.0]
    assert box.roll_deg == 0.0
    with pytest.raises(AttributeError):
        box.x0 = 0.0  # frozen


def test_support_to_score_monotonic():
    scores = [support_to_score(n) for n in (2, 3, 6, 20, 100)]
    assert scores == sorted(scores) and 0.0 < scores[0] and scores[-1] < 1.0


def test_detect_faces_convenience(astronaut):
    faces = detect_faces(astronaut)
    assert len(faces) == 1 and _near(faces[0].center, ASTRONAUT_FACE_CENTER, 25)


def test_results_sorted_by_area_and_exhaustive_mode(astronaut):
    # Two copies of the face at different sizes side by side.
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 768, 3), 128, np.uint8)
    canvas[:, :512] = astronaut
    canvas[128:384, 512:] = small
    faces = FaceDetector(exhaustive=True)(canvas)
    assert len(faces) >= 2
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    assert _near(faces[0].center, ASTRONAUT_FACE_CENTER, 25)
    assert any(
        _near(f.center, (512 + ASTRONAUT_FACE_CENTER[0] / 2, 128 + ASTRONAUT_FACE_CENTER[1] / 2), 15) for f in faces
    )


def test_constructor_is_lazy_and_validates():
    det = FaceDetector()
    assert getattr(det._local, "cascades", None) is None  # nothing loaded yet
    bad = ({"max_side": 8}, {"min_face_frac": 0.0}, {"scale_factor": 1.0}, {"merge_iou": 1.5}, {"min_support": 0})
    for kwargs in bad:
        with pytest.raises(ValueError):
            FaceDetector(**kwargs)


def test_thread_safe(astronaut):
    det = FaceDetector()
    expected = det(astronaut)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: det(astronaut), range(8)))
    assert all(r == expected for r in results)


def test_picklable(astronaut):
    det = FaceDetector(roll_deg=20.0)
    det(astronaut)  # loads cascades
    clone = pickle.loads(pickle.dumps(det))
    assert clone.roll_deg == 20.0
    assert clone(astronaut) == det(astronaut)


def test_missing_cv2_data_gives_clear_error(monkeypatch, astronaut):
    monkeypatch.delattr(detect_mod.cv2, "data", raising=False)
    with pytest.raises(RuntimeError, match=r"opencv-python-headless<5"):
        FaceDetector()(astronaut)


def _aflw_rows() -> list[dict[str, str]]:
    with open(AFLW_DEV / "index.csv", newline="") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: r["name"])


@pytest.mark.skipif(not (AFLW_DEV / "index.csv").is_file(), reason="../shared/aflw2000-3d-dev not found")
def test_aflw2000_dev_detection_rate(detector):
    sio = pytest.importorskip("scipy.io")
    rows = _aflw_rows()
    frontal = [r for r in rows if r["yaw_bin"] == "0-30"]
    turned = [r for r in rows if r["yaw_bin"] in ("30-60", "60-90")]
    # A fixed, evenly spread subset: 40 frontal and 20 turned faces.
    picks = {
        "frontal": frontal[:: max(1, len(frontal) // 40)][:40],
        "turned": turned[:: max(1, len(turned) // 20)][:20],
    }
    rates = {}
    for group, sel in picks.items():
        hits = 0
        for row in sel:
            img = cv2.cvtColor(cv2.imread(str(AFLW_DEV / f"{row['name']}.jpg")), cv2.COLOR_BGR2RGB)
            pts = sio.loadmat(str(AFLW_DEV / f"{row['name']}.mat"))["pt3d_68"][:2].T - 1.0  # MATLAB 1-based -> 0-based
            cx, cy = pts.mean(0)
            faces = detector(img)
            hits += bool(faces) and faces[0].x0 <= cx <= faces[0].x1 and faces[0].y0 <= cy <= faces[0].y1
        rates[group] = hits / len(sel)
    assert len(picks["frontal"]) == 40
    assert rates["frontal"] >= 0.9, rates
    assert rates["turned"] >= 0.7, rates  # measured ~0.9 on all 174 dev images with yaw 30-90


def test_face_filling_the_frame_found_by_padded_search(detector, astronaut):
    """A tight crop (the face fills the frame, as in aligned-face data sets) is found only on a padded copy."""
    import cv2

    f = detector(astronaut)[0]
    m = 0.15
    crop = astronaut[int(f.y0 + m * f.height):int(f.y1 - m * f.height), int(f.x0 + m * f.width):int(f.x1 - m * f.width)]
    tight = cv2.resize(np.ascontiguousarray(crop), (200, 200), interpolation=cv2.INTER_CUBIC)
    assert FaceDetector(pad_fraction=0.0)(tight) == []
    faces = detector(tight)
    assert len(faces) == 1
    # Boxes are in the coordinates of the unpadded image: centred on the crop, about its size.
    assert _near(faces[0].center, (99.5, 99.5), 25) and 150 <= faces[0].width <= 300
    with pytest.raises(ValueError, match="pad_fraction"):
        FaceDetector(pad_fraction=1.5)
