"""Tests for facerecon.inference.image_io (load_image, downscale_to_max_side)."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerecon.errors import FaceReconError, ImageReadError
from facerecon.inference.image_io import downscale_to_max_side, load_image


def _rgb(h: int = 24, w: int = 32) -> np.ndarray:
    """A deterministic RGB test image with distinct channels."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 7 % 256, y * 11 % 256, (x + y) * 5 % 256], axis=-1).astype(np.uint8)


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _check(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert out.shape == (*shape, 3)
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]


# --------------------------------------------------------------------------------------------------------------------
# input kinds


def test_path_str_and_pathlib(tmp_path):
    arr = _rgb()
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    for src in (path, str(path)):
        out = load_image(src)
        _check(out, (24, 32))
        np.testing.assert_array_equal(out, arr)


def test_bytes_png_and_jpeg():
    arr = _rgb()
    out = load_image(_encode(Image.fromarray(arr)))
    np.testing.assert_array_equal(out, arr)
    out = load_image(bytearray(_encode(Image.fromarray(arr), "JPEG", quality=95)))
    _check(out, (24, 32))
    assert np.abs(out.astype(int) - arr).mean() < 12  # lossy


def test_file_object():
    arr = _rgb()
    out = load_image(io.BytesIO(_encode(Image.fromarray(arr))))
    np.testing.assert_array_equal(out, arr)


def test_pil_modes():
    arr = _rgb()
    np.testing.assert_array_equal(load_image(Image.fromarray(arr)), arr)
    gray = Image.fromarray(arr[..., 0])
    out = load_image(gray)
    np.testing.assert_array_equal(out, np.repeat(arr[..., :1], 3, axis=2))
    pal = Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    _check(load_image(pal), (24, 32))
    np.testing.assert_array_equal(load_image(pal), np.asarray(pal.convert("RGB")))
    cmyk = Image.new("CMYK", (20, 18), (0, 0, 0, 0))
    out = load_image(cmyk)
    _check(out, (18, 20))
    assert (out == 255).all()


def test_pil_alpha_composited_over_white():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200  # red-ish, transparent on the left half, opaque on the right
    rgba[:, 8:, 3] = 255
    out = load_image(Image.fromarray(rgba, "RGBA"))
    assert (out[:, :8] == 255).all()
    assert (out[:, 8:] == [200, 0, 0]).all()
    la = Image.fromarray(np.stack([np.zeros((16, 16), np.uint8), rgba[..., 3]], -1), "LA")
    out = load_image(la)
    assert (out[:, :8] == 255).all() and (out[:, 8:] == 0).all()


def test_palette_with_transparency_composited_over_white():
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (3 * 254))
    pal.paste(1, (8, 0, 16, 16))
    pal.info["transparency"] = 0
    out = load_image(_encode(pal, "PNG", transparency=0))
    assert (out[:, :8] == 255).all()
    assert (out[:, 8:] == [255, 0, 0]).all()


def test_16bit_grayscale_png_is_scaled():
    arr16 = np.zeros((16, 16), np.uint16)
    arr16[:, 8:] = 65535
    arr16[0, 0] = 32896  # 128 * 257
    out = load_image(_encode(Image.fromarray(arr16)))
    assert out[0, 0].tolist() == [128, 128, 128]
    assert (out[:, 8:] == 255).all()


def test_multi_frame_gif_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = load_image(buf.getvalue())
    _check(out, (20, 20))
    assert (out == [255, 0, 0]).all()


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 high with a red block at the stored top-left corner. Orientation 6 means "rotate
    # 90 degrees clockwise to display": the result is 20 wide x 40 high and the block ends up top-right.
    stored = np.full((20, 40, 3), 255, np.uint8)
    stored[:6, :6] = [255, 0, 0]
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif.tobytes())
    out = load_image(path)
    _check(out, (40, 20))
    assert out[2, 17].tolist() == pytest.approx([255, 0, 0], abs=40)  # top-right
    assert out[2, 2].tolist() == pytest.approx([255, 255, 255], abs=40)  # top-left is white
    assert out[37, 17].tolist() == pytest.approx([255, 255, 255], abs=40)


# --------------------------------------------------------------------------------------------------------------------
# numpy arrays


def test_numpy_rgb_is_copied():
    arr = _rgb()
    out = load_image(arr)
    np.testing.assert_array_equal(out, arr)
    assert not np.shares_memory(out, arr)


def test_numpy_bgr():
    arr = _rgb()
    out = load_image(np.ascontiguousarray(arr[..., ::-1]), channel_order="BGR")
    np.testing.assert_array_equal(out, arr)
    out = load_image(arr[..., ::-1], channel_order="bgr")  # non-contiguous view, lower case
    np.testing.assert_array_equal(out, arr)
    _check(out, (24, 32))


def test_numpy_gray_and_single_channel():
    gray = _rgb()[..., 1]
    for src in (gray, gray[..., None]):
        out = load_image(src)
        _check(out, (24, 32))
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], gray)


def test_numpy_rgba_and_bgra_composited_over_white():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 2] = 90  # blue
    rgba[:, 8:, 3] = 255
    rgba[:, 4:8, 3] = 128
    out = load_image(rgba)
    assert (out[:, :4] == 255).all()
    assert (out[:, 8:] == [0, 0, 90]).all()
    assert out[0, 5].tolist() == [127, 127, 172]  # half-transparent: 0.5 * colour + 0.5 * white
    bgra = np.ascontiguousarray(rgba[..., [2, 1, 0, 3]])
    np.testing.assert_array_equal(load_image(bgra, channel_order="BGR"), out)


def test_numpy_float_bool_uint16():
    arr = _rgb()
    f = arr.astype(np.float32) / 255.0
    np.testing.assert_array_equal(load_image(f), arr)
    over = f.copy()
    over[0, 0] = [1.2, -0.1, 0.5]  # slight overshoots are clipped
    assert load_image(over)[0, 0].tolist() == [255, 0, 128]
    mask = np.zeros((16, 16), bool)
    mask[:, 8:] = True
    out = load_image(mask)
    assert (out[:, :8] == 0).all() and (out[:, 8:] == 255).all()
    u16 = arr.astype(np.uint16) * 257
    np.testing.assert_array_equal(load_image(u16), arr)


@pytest.mark.parametrize(
    ("arr", "words"),
    [
        (np.zeros((20, 20, 2), np.uint8), ["shape", "(20, 20, 2)"]),
        (np.zeros((20, 20, 3, 1), np.uint8), ["shape", "(20, 20, 3, 1)"]),
        (np.zeros(20, np.uint8), ["shape", "(20,)"]),
        (np.zeros((20, 20, 3), np.int32), ["dtype", "int32"]),
        (np.zeros((20, 20, 3), np.complex64), ["dtype", "complex64"]),
        (np.full((20, 20, 3), 200.0), ["[0, 1]", "200"]),
        (np.full((20, 20, 3), np.nan, np.float32), ["NaN"]),
        (np.zeros((10, 40, 3), np.uint8), ["too small", "40x10"]),
    ],
)
def test_numpy_bad_arrays(arr, words):
    with pytest.raises(ImageReadError) as info:
        load_image(arr)
    for word in words:
        assert word in str(info.value)


def test_bad_channel_order_and_type():
    with pytest.raises(ValueError, match="channel_order"):
        load_image(_rgb(), channel_order="RGBA")
    with pytest.raises(TypeError, match="int"):
        load_image(42)


# --------------------------------------------------------------------------------------------------------------------
# bad files


def test_missing_path(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageReadError, match="no such file") as info:
        load_image(path)
    assert "nope.jpg" in str(info.value)
    assert isinstance(info.value, FaceReconError) and isinstance(info.value, ValueError)


def test_directory(tmp_path):
    with pytest.raises(ImageReadError, match="directory") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_empty_file_and_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty") as info:
        load_image(path)
    assert "empty.png" in str(info.value)
    with pytest.raises(ImageReadError, match="empty"):
        load_image(b"")


def test_random_bytes(tmp_path):
    junk = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageReadError, match="could not decode"):
        load_image(junk)
    path = tmp_path / "junk.jpg"
    path.write_bytes(junk)
    with pytest.raises(ImageReadError, match="could not decode") as info:
        load_image(path)
    assert "junk.jpg" in str(info.value)


def test_truncated_jpeg(tmp_path):
    data = _encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match="could not decode") as info:
        load_image(path)
    assert "cut.jpg" in str(info.value)


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not an image\n" * 20)
    with pytest.raises(ImageReadError, match="could not decode.*notes.txt"):
        load_image(path)


def test_one_pixel_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(ImageReadError, match=r"too small: 1x1 px, need at least 16x16") as info:
        load_image(path)
    assert "dot.png" in str(info.value)
    with pytest.raises(ImageReadError, match="too small"):
        load_image(Image.new("RGB", (15, 300)))


def test_max_pixels_limit():
    data = _encode(Image.new("RGB", (100, 80)))
    assert load_image(data, max_pixels=8000).shape == (80, 100, 3)
    with pytest.raises(ImageReadError, match=r"too large: 100x80 px.*max_pixels=7999"):
        load_image(data, max_pixels=7999)
    with pytest.raises(ImageReadError, match="too large"):
        load_image(np.zeros((100, 80, 3), np.uint8), max_pixels=1000)


def test_huge_image_is_fast():
    img = Image.new("L", (8000, 8000), 77)
    data = _encode(img, "PNG", compress_level=1)
    del img
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError, match="too large: 8000x8000"):
        load_image(data, max_pixels=10_000_000)
    assert time.perf_counter() - t0 < 1.0  # rejected from the header, nothing decoded
    out = load_image(data)  # 64 Mpx is under the default limit: a correct array
    assert out.shape == (8000, 8000, 3) and out[0, 0].tolist() == [77, 77, 77] and out[-1, -1].tolist() == [77] * 3


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bomb_is_rejected_quickly():
    bomb = _png_header_only(30000, 30000)  # claims 900 Mpx in 60 bytes
    limit_before = Image.MAX_IMAGE_PIXELS
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError, match="too large"):
        load_image(bomb)
    with pytest.raises(ImageReadError, match="too large"):
        load_image(bomb, max_pixels=10**10)  # Pillow's own bomb guard still applies
    assert time.perf_counter() - t0 < 1.0
    assert Image.MAX_IMAGE_PIXELS == limit_before  # global Pillow state untouched


# --------------------------------------------------------------------------------------------------------------------
# downscale_to_max_side


def test_downscale_unchanged_when_small():
    arr = _rgb()
    out, factor = downscale_to_max_side(arr, 32)
    assert out is arr and factor == 1.0


def test_downscale_shape_factor_and_point_round_trip():
    img = np.zeros((300, 400), np.uint8)
    img[80:120, 180:220] = 255  # square centred on pixel centre (199.5, 99.5)
    small, factor = downscale_to_max_side(img, 100)
    assert small.shape == (75, 100) and factor == pytest.approx(0.25)
    ys, xs = np.nonzero(small > 0)
    w = small[ys, xs].astype(float)
    cx, cy = (xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()
    # Pixel-centre convention: x_small = (x + 0.5) * factor - 0.5.
    assert cx == pytest.approx((199.5 + 0.5) * factor - 0.5, abs=0.05)
    assert cy == pytest.approx((99.5 + 0.5) * factor - 0.5, abs=0.05)
    # ... and back: x = (x_small + 0.5) / factor - 0.5.
    assert (cx + 0.5) / factor - 0.5 == pytest.approx(199.5, abs=0.2)
    # The whole-image box maps onto the whole small image.
    assert (400 - 0.5 + 0.5) * factor - 0.5 == pytest.approx(small.shape[1] - 0.5)


def test_downscale_color_and_errors():
    out, factor = downscale_to_max_side(np.zeros((1000, 500, 3), np.uint8), 640)
    assert out.shape == (640, 320, 3) and factor == pytest.approx(0.64)
    with pytest.raises(ValueError):
        downscale_to_max_side(np.zeros((10, 10), np.uint8), 0)
    with pytest.raises(ValueError):
        downscale_to_max_side(np.zeros((0, 10), np.uint8), 5)


def test_load_then_downscale_roundtrip(tmp_path):
    path = Path(tmp_path) / "big.png"
    Image.fromarray(np.tile(_rgb(), (40, 40, 1))).save(path)  # 960 x 1280
    img = load_image(path)
    small, factor = downscale_to_max_side(img, 640)
    assert small.shape == (480, 640, 3) and factor == pytest.approx(0.5)
