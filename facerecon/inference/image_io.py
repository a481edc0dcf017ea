"""Read images from any common source into one normalised form: an (H, W, 3) uint8 RGB numpy array.

Coordinates follow the project convention: pixel ``(i, j)`` (column ``i``, row ``j``, 0-based) has its centre at
``(x=i, y=j)`` and covers ``[i - 0.5, i + 0.5]``.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facerecon.errors import ImageReadError

__all__ = ["MIN_IMAGE_SIDE", "ImageSource", "downscale_to_max_side", "load_image"]

logger = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 16
"""Smallest accepted width and height, in pixels."""

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray
"""Everything :func:`load_image` accepts."""

# Everything Pillow raises for unreadable, truncated or malformed data.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
)


def load_image(source: ImageSource, *, channel_order: str = "RGB", max_pixels: int = 120_000_000) -> np.ndarray:
    """Load an image as an ``(H, W, 3)`` uint8 RGB array.

    Accepted sources:

    * a path (``str`` or ``os.PathLike``; ``~`` is expanded) or encoded bytes (``bytes``, ``bytearray``,
      ``memoryview``) or a binary file object with ``read()``: decoded with Pillow. The EXIF orientation tag is
      applied, multi-frame files (GIF, TIFF, ...) give their first frame, and every mode is converted to RGB
      (palette, grayscale, CMYK, 16-bit grayscale scaled by 1/257, float assumed in [0, 1]).
    * a ``PIL.Image.Image``: converted the same way (its EXIF orientation is applied too; a multi-frame image
      gives the frame it is on, and the image object is not modified).
    * a numpy array, read as **RGB** by default. Pass ``channel_order="BGR"`` for arrays that come from OpenCV
      (``cv2.imread``, ``cv2.VideoCapture``); ``channel_order`` only affects numpy arrays. Shapes ``(H, W)`` and
      ``(H, W, 1)`` (grayscale), ``(H, W, 3)`` and ``(H, W, 4)`` (RGBA, or BGRA with ``channel_order="BGR"``);
      dtypes uint8, uint16 (scaled by 255/65535), bool (False -> 0, True -> 255) and float (values in [0, 1]; slight
      overshoots are clipped, values far outside raise).

    Transparency (RGBA/LA/palette alpha, 4-channel arrays) is composited over a **white** background.

    Args:
        source: The image, as described above.
        channel_order: ``"RGB"`` or ``"BGR"``: channel order of a numpy ``source``.
        max_pixels: Largest accepted ``width * height``. Checked from the file header, before decoding. Pillow's
            own decompression-bomb guard (``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 Mpx by default) also
            applies to encoded sources; this function does not change that global setting.

    Returns:
        A new C-contiguous ``(H, W, 3)`` uint8 array in RGB order (never a view of ``source``).

    Raises:
        ImageReadError: The source is missing, a directory, empty, not decodable as an image, an unsupported array
            shape/dtype, smaller than 16 px on a side, or larger than ``max_pixels``. The message names the source.
        TypeError: ``source`` is none of the accepted types.
        ValueError: ``channel_order`` is not ``"RGB"`` or ``"BGR"``.
    """
    order = channel_order.upper() if isinstance(channel_order, str) else channel_order
    if order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")

    if isinstance(source, np.ndarray):
        what = f"numpy array of shape {source.shape} and dtype {source.dtype}"
        if source.ndim not in (2, 3):
            raise ImageReadError(f"unsupported image shape: {what}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
        _check_size(source.shape[1], source.shape[0], max_pixels, what)
        rgb = _array_to_rgb(source, bgr=order == "BGR", what=what)
    elif isinstance(source, Image.Image):
        what = f"PIL image (mode {source.mode!r}, size {source.width}x{source.height})"
        _check_size(source.width, source.height, max_pixels, what)
        rgb = _convert_pil(source, what, first_frame=False)
    elif isinstance(source, (str, os.PathLike)):
        rgb = _load_path(Path(source).expanduser(), max_pixels)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        what = f"image bytes ({len(data)} bytes)"
        if not data:
            raise ImageReadError("could not decode empty bytes (0 bytes) as an image")
        rgb = _open_and_decode(io.BytesIO(data), what, max_pixels)
    elif hasattr(source, "read"):
        what = f"file object {getattr(source, 'name', type(source).__name__)!r}"
        rgb = _open_and_decode(source, what, max_pixels)
    else:
        raise TypeError(f"load_image expects a path, bytes, a PIL image or a numpy array, got {type(source).__name__}")
    return np.ascontiguousarray(rgb)


def downscale_to_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink an image so that its longer side is at most ``max_side`` pixels (``cv2.INTER_AREA``).

    Images that already fit are returned as they are (the same object, not a copy) with factor 1.0; images are
    never enlarged.

    Coordinates scale about the image edge, not about pixel centres. With ``factor`` as returned, a point maps as
    ``x_small = (x_orig + 0.5) * factor - 0.5`` and back as ``x_orig = (x_small + 0.5) / factor - 0.5`` (same for
    ``y``); box edges map the same way, which keeps the whole-image box ``[-0.5, -0.5, W - 0.5, H - 0.5]`` whole.
    The new size is rounded to whole pixels, so ``factor`` is exact along the longer side and within half a small
    pixel along the shorter one.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array (any dtype ``cv2.resize`` accepts).
        max_side: Largest allowed side length in pixels (>= 1).

    Returns:
        ``(image, factor)`` where ``new_size = old_size * factor`` and ``0 < factor <= 1``.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(
            f"expected a non-empty (H, W) or (H, W, C) image array, got {getattr(image, 'shape', image)!r}"
        )
    h, w = image.shape[:2]
    longest = max(h, w)
    if longest <= max_side:
        return image, 1.0
    factor = max_side / longest
    new_w = max(1, round(w * factor))
    new_h = max(1, round(h * factor))
    small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return small, factor


# --------------------------------------------------------------------------------------------------------------------
# helpers


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise ImageReadError(
            f"{what} is too small: {width}x{height} px, need at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
        )
    if width * height > max_pixels:
        raise ImageReadError(
            f"{what} is too large: {width}x{height} px = {width * height} pixels, more than max_pixels={max_pixels}"
        )


def _load_path(path: Path, max_pixels: int) -> np.ndarray:
    name = f"'{path}'"
    try:
        if path.is_dir():
            raise ImageReadError(f"could not read {name}: it is a directory, not an image file")
        if not path.exists():
            raise ImageReadError(f"could not read {name}: no such file")
        if path.stat().st_size == 0:
            raise ImageReadError(f"could not decode {name} as an image: the file is empty (0 bytes)")
        with open(path, "rb") as fh:
            return _open_and_decode(fh, name, max_pixels)
    except PermissionError as exc:
        raise ImageReadError(f"could not read {name}: permission denied") from exc
    except ImageReadError:
        raise
    except OSError as exc:  # e.g. I/O error while reading, name too long
        raise ImageReadError(f"could not read {name}: {exc}") from exc


def _open_and_decode(fp: Any, what: str, max_pixels: int) -> np.ndarray:
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{what} is too large: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"could not decode {what} as an image (unsupported format or corrupt data)") from exc
    with img:
        _check_size(img.width, img.height, max_pixels, what)  # header only: nothing decoded yet
        return _convert_pil(img, what, first_frame=True)


def _convert_pil(img: Image.Image, what: str, *, first_frame: bool) -> np.ndarray:
    """Decode a (lazily loaded) PIL image to RGB uint8, mapping decoder errors to ImageReadError."""
    try:
        return _decode_pil(img, what, first_frame=first_frame)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{what} is too large: {exc}") from exc
    except (*_DECODE_ERRORS, MemoryError) as exc:
        desc = f"{what} ({img.format or 'unknown'} {img.width}x{img.height})"
        raise ImageReadError(f"could not decode {desc} as an image (truncated or corrupt data: {exc})") from exc


def _decode_pil(img: Image.Image, what: str, *, first_frame: bool) -> np.ndarray:
    """Convert a PIL image to RGB uint8, honouring EXIF orientation."""
    if first_frame and getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # multi-frame (GIF, TIFF, ...): first frame
    if _exif_orientation(img, what) != 1:
        img = ImageOps.exif_transpose(img)  # a new, decoded image
    if img.width < MIN_IMAGE_SIDE or img.height < MIN_IMAGE_SIDE:
        raise ImageReadError(
            f"{what} is too small: {img.width}x{img.height} px, need at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
        )
    return _pil_to_rgb(img, what)


def _exif_orientation(img: Image.Image, what: str) -> int:
    """EXIF orientation tag (1-8), 1 when absent or unreadable."""
    try:
        value = img.getexif().get(0x0112, 1)
    except _DECODE_ERRORS as exc:
        if "truncated" in str(exc):  # PNG reads its EXIF chunk after the pixels
            raise
        # A broken EXIF block should not make an otherwise readable image unusable.
        logger.warning("ignoring unreadable EXIF data of %s: %s", what, exc)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _pil_to_rgb(img: Image.Image, what: str) -> np.ndarray:
    mode = img.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if mode == "RGB" and not has_alpha:
        return np.array(img, dtype=np.uint8)
    if mode == "L" and not has_alpha:
        return _array_to_rgb(np.asarray(img), bgr=False, what=what)
    if mode in ("I", "F") or mode.startswith("I;"):
        arr = np.asarray(img)
        if arr.ndim != 2:
            raise ImageReadError(f"could not decode {what}: unsupported PIL mode {mode!r}")
        if mode == "F":
            return _array_to_rgb(arr.astype(np.float32), bgr=False, what=what)
        # 16-bit (or wider) grayscale: scale the 16-bit range to 8 bits.
        arr16 = np.clip(arr.astype(np.int64), 0, 65535).astype(np.uint16)
        return _array_to_rgb(arr16, bgr=False, what=what)
    if has_alpha:
        return _composite_over_white(np.asarray(img.convert("RGBA")))
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """Blend an (H, W, 4) uint8 RGBA array over a white background."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    rgb = rgba[..., :3].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.all(np.isfinite(arr)):
            raise ImageReadError(f"{what} contains NaN or infinite values")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < -0.5 or hi > 1.5:
            raise ImageReadError(
                f"{what} has values in [{lo:g}, {hi:g}]; float images must be in [0, 1] "
                "(divide 0-255 data by 255 or pass it as uint8)"
            )
        return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageReadError(f"unsupported image dtype: {what}; use uint8, uint16, bool or float in [0, 1]")


def _array_to_rgb(arr: np.ndarray, *, bgr: bool, what: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        gray = np.ascontiguousarray(_to_uint8(arr, what))
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageReadError(f"unsupported image shape: {what}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    img = _to_uint8(arr, what)
    if bgr:
        img = img[..., [2, 1, 0, 3]] if img.shape[2] == 4 else img[..., ::-1]
    if img.shape[2] == 4:
        return _composite_over_white(img)
    return np.array(img, dtype=np.uint8, order="C", copy=True)
