"""Training augmentation of face crops: one affine warp from the source image, photometric jitter, occluders.

All geometric augmentation (in-plane rotation, translation, scale, horizontal flip) is composed with the crop map of
the face box into ONE affine, applied by a single ``cv2.warpAffine`` from the source image (after an antialiasing
Gaussian when it downsamples), and the landmarks go through the same affine. A flip mirrors x (``x' = S - 1 - x`` in
0-based pixel centres) and permutes landmarks and weights with :data:`training.data.EXTENDED_MIRROR`.

Then, on the S x S crop: synthetic occluders (sunglasses, surgical mask, a hand-like box or ellipse; occluded landmarks
keep their targets), colour jitter (brightness, contrast, saturation, hue as one 3 x 3 colour matrix), grayscale,
Gaussian blur and JPEG re-encoding. Randomness comes only from the ``numpy.random.Generator`` passed in (the dataset
derives it from (seed, epoch, index)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from facerecon.config import check_crop_scale
from training.data import CANONICAL_CROP_SCALE, EXTENDED_MIRROR, LEFT_EYE_CENTRE, MOUTH_CENTRE, RIGHT_EYE_CENTRE

__all__ = ["AugmentConfig", "AugmentResult", "Augmenter", "GeometricParams"]

OCCLUDERS: tuple[str, ...] = ("sunglasses", "mask", "hand")
#: Landmarks that outline a surgical mask: lower jaw, nose bottom, mouth, mouth centre.
_MASK_POINTS = (*range(2, 15), 29, 30, 31, 33, 35, *range(48, 68), MOUTH_CENTRE)
#: RGB -> YIQ (rows Y, I, Q); colour jitter works on luma Y and the chroma plane (I, Q).
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)
_MIRROR = np.array(EXTENDED_MIRROR)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges and probabilities.

    Attributes:
        rotation_deg: in-plane rotation, uniform in +/- this (degrees).
        large_rotation_p: probability of drawing the rotation from +/- ``large_rotation_deg`` instead (faces lying
            on their side or upside down, which the +/- ``rotation_deg`` draw never shows); 0 draws no extra number,
            so the random stream is the same as without the option.
        large_rotation_deg: range of those large rotations (degrees, at most 180).
        translate: box shift, uniform in +/- this fraction of the box side, per axis.
        scale: box side multiplier range (uniform); > 1 zooms out.
        flip_p: probability of a horizontal flip.
        occlusion_p: probability of one synthetic occluder (sunglasses, mask or hand, equally likely where the
            needed landmarks exist).
        colour_p: probability of colour jitter.
        brightness, contrast, saturation: factors uniform in [1 - v, 1 + v].
        hue: hue rotation, uniform in +/- this fraction of the colour circle.
        grayscale_p: probability of converting to grey (3 equal channels).
        blur_p: probability of a Gaussian blur with sigma uniform in ``blur_sigma``.
        jpeg_p: probability of JPEG re-encoding with quality uniform in ``jpeg_quality``.
    """

    rotation_deg: float = 30.0
    large_rotation_p: float = 0.0
    large_rotation_deg: float = 180.0
    translate: float = 0.08
    scale: tuple[float, float] = (0.85, 1.15)
    flip_p: float = 0.5
    occlusion_p: float = 0.3
    colour_p: float = 0.8
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03
    grayscale_p: float = 0.05
    blur_p: float = 0.1
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    jpeg_p: float = 0.2
    jpeg_quality: tuple[int, int] = (30, 90)

    def geometric_only(self) -> AugmentConfig:
        """Copy of this config with every photometric step and the occluders switched off."""
        return replace(self, occlusion_p=0.0, colour_p=0.0, grayscale_p=0.0, blur_p=0.0, jpeg_p=0.0)


@dataclass(frozen=True)
class GeometricParams:
    """One draw of the geometric augmentation (``angle_deg`` counter-clockwise as displayed)."""

    angle_deg: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    flip: bool = False


@dataclass
class AugmentResult:
    """Output of :class:`Augmenter`.

    Attributes:
        image: (S, S, 3) uint8 RGB crop.
        landmarks: (71, 2) float32 crop pixels (0-based centres), already mirrored / permuted if flipped.
        weights: (71,) float32, permuted like the landmarks.
        flipped: whether a horizontal flip was applied (the caller negates yaw).
        angle_deg: the in-plane rotation applied (degrees, counter-clockwise as displayed).
        matrix: (2, 3) float64 affine from source-image pixels to crop pixels.
        face_box: (4,) float64 ``[x0, y0, x1, y1]`` crop-pixel box of the face region (the central 1 / 1.6 of the
            box, through the augmentation); occluders are drawn only inside it.
        occluder: name of the occluder drawn, or None.
    """

    image: np.ndarray
    landmarks: np.ndarray
    weights: np.ndarray
    flipped: bool
    matrix: np.ndarray
    face_box: np.ndarray
    occluder: str | None = None
    angle_deg: float = 0.0


def _check_range(name: str, lo: float, hi: float, lo_min: float = -math.inf) -> None:
    if not lo_min <= lo <= hi:
        raise ValueError(f"AugmentConfig.{name} must be an increasing range above {lo_min}, got ({lo}, {hi})")


class Augmenter:
    """Random face-crop augmentation into ``size`` x ``size`` crops (see the module docstring)."""

    def __init__(self, size: int, config: AugmentConfig | None = None,
                 crop_scale: float = CANONICAL_CROP_SCALE) -> None:
        """Create the augmenter.

        Args:
            size: crop side S in pixels.
            config: ranges and probabilities (default :class:`AugmentConfig`).
            crop_scale: the boxes' side over the face's (the model's ``crop_scale``); sets :meth:`face_box`.
        """
        cfg = config or AugmentConfig()
        if size < 8:
            raise ValueError(f"crop size must be >= 8 pixels, got {size}")
        check_crop_scale(crop_scale)
        _check_range("scale", *cfg.scale, lo_min=1e-3)
        _check_range("blur_sigma", *cfg.blur_sigma, lo_min=0.0)
        _check_range("jpeg_quality", *cfg.jpeg_quality, lo_min=1)
        if not (0.0 <= cfg.rotation_deg <= 180.0 and 0.0 <= cfg.large_rotation_deg <= 180.0):
            raise ValueError(f"AugmentConfig.rotation_deg and large_rotation_deg must be in [0, 180] degrees, got "
                             f"{cfg.rotation_deg} and {cfg.large_rotation_deg}")
        for name in ("flip_p", "large_rotation_p", "occlusion_p", "colour_p", "grayscale_p", "blur_p", "jpeg_p"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {getattr(cfg, name)}")
        self.size = int(size)
        self.config = cfg
        self.crop_scale = float(crop_scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, crop_scale={self.crop_scale}, config={self.config})"

    # ------------------------------------------------------------------------------------------------------------------
    # geometry

    def sample_geometry(self, rng: np.random.Generator) -> GeometricParams:
        """Draw rotation, translation, scale and flip."""
        c = self.config
        limit = c.rotation_deg
        if c.large_rotation_p > 0 and rng.random() < c.large_rotation_p:
            limit = c.large_rotation_deg
        return GeometricParams(
            angle_deg=float(rng.uniform(-limit, limit)),
            shift=(float(rng.uniform(-c.translate, c.translate)), float(rng.uniform(-c.translate, c.translate))),
            scale=float(rng.uniform(*c.scale)),
            flip=bool(rng.random() < c.flip_p),
        )

    def affine(self, box: np.ndarray, params: GeometricParams) -> np.ndarray:
        """(2, 3) affine from image pixels to crop pixels for ``box`` augmented by ``params``.

        With identity params it equals :func:`facerecon.geometry.crop_affine`. The augmented box is the original box
        shifted by ``shift * (w, h)``, scaled by ``scale`` about its centre and rotated by ``angle_deg``; the crop shows
        it upright, then mirrored if ``flip``.
        """
        x0, y0, x1, y1 = (float(v) for v in box)
        w, h = x1 - x0, y1 - y0
        if not (w > 0 and h > 0 and math.isfinite(w + h + x0 + y0)):
            raise ValueError(f"invalid box {list(box)}")
        centre = np.array([x0 + 0.5 * w + params.shift[0] * w, y0 + 0.5 * h + params.shift[1] * h])
        a = math.radians(params.angle_deg)
        # Content rotates counter-clockwise on screen (y down): q = R (p - c).
        rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        lin = np.diag([self.size / (params.scale * w), self.size / (params.scale * h)]) @ rot
        half = (self.size - 1) / 2.0
        m = np.zeros((2, 3))
        m[:, :2] = lin
        m[:, 2] = half - lin @ centre
        if params.flip:
            m[0] = -m[0]
            m[0, 2] += self.size - 1
        return m

    def face_box(self, params: GeometricParams) -> np.ndarray:
        """Crop-pixel bounding box of the face region under ``params``.

        The face region is the central ``S / crop_scale`` square of the un-augmented crop (the landmarks' box under
        the crop rule), mapped through the augmentation and clipped to the crop.
        """
        s, half = self.size, (self.size - 1) / 2.0
        canonical_box = np.array([-0.5, -0.5, s - 0.5, s - 0.5])
        # Crop -> crop map of the augmentation: affine(canonical box) with the canonical crop as the "image".
        m = self.affine(canonical_box, params)
        r = s / (2.0 * self.crop_scale)
        corners = np.array([[half - r, half - r], [half + r, half - r], [half + r, half + r], [half - r, half + r]])
        q = corners @ m[:, :2].T + m[:, 2]
        lo = np.clip(q.min(0), -0.5, s - 0.5)
        hi = np.clip(q.max(0), -0.5, s - 0.5)
        return np.concatenate([lo, hi])

    def warp(self, image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """Resample ``image`` with the image -> crop ``matrix`` in one ``cv2.warpAffine`` (bilinear, black outside).

        When the map downsamples by a factor > 1.25 the source is first smoothed with a Gaussian of sigma
        ``(factor - 1) / 2`` (scikit-image's antialiasing rule): a filter, not a second resampling.
        """
        factor = 1.0 / math.sqrt(abs(np.linalg.det(matrix[:, :2])))
        if factor > 1.25:
            image = cv2.GaussianBlur(image, (0, 0), (factor - 1.0) / 2.0)
        return cv2.warpAffine(image, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))

    # ------------------------------------------------------------------------------------------------------------------
    # occluders

    def occlude(self, image: np.ndarray, landmarks: np.ndarray, weights: np.ndarray, face_box: np.ndarray,
                rng: np.random.Generator, kind: str | None = None) -> str | None:
        """Draw one occluder into ``image`` (in place), clipped to ``face_box``.

        Args:
            image: (S, S, 3) uint8 crop.
            landmarks: (71, 2) crop-pixel landmarks (after flipping).
            weights: (71,) weights; only points with weight > 0 are used to place occluders.
            face_box: [x0, y0, x1, y1] crop-pixel box that bounds every change.
            rng: random generator.
            kind: "sunglasses", "mask" or "hand"; None picks one of those whose landmarks exist.

        Returns:
            The occluder drawn, or None if the face box is empty.
        """
        s = self.size
        fx0, fy0 = max(int(math.ceil(face_box[0])), 0), max(int(math.ceil(face_box[1])), 0)
        fx1, fy1 = min(int(math.floor(face_box[2])), s - 1), min(int(math.floor(face_box[3])), s - 1)
        if fx1 - fx0 < 2 or fy1 - fy0 < 2:
            return None
        ok = weights > 0
        eyes = [i for i in (LEFT_EYE_CENTRE, RIGHT_EYE_CENTRE) if ok[i]]
        mask_pts = [i for i in _MASK_POINTS if ok[i]]
        possible = ["hand"]
        if eyes:
            possible.append("sunglasses")
        if len(mask_pts) >= 3 and (ok[MOUTH_CENTRE] or ok[48] or ok[54]):
            possible.append("mask")
        if kind is None:
            kind = possible[int(rng.integers(len(possible)))]
        elif kind not in possible:
            raise ValueError(f"occluder {kind!r} needs landmarks this sample lacks (possible: {possible})")
        side = min(fx1 - fx0, fy1 - fy0)
        # Draw at 4x sub-pixel precision (shift=2) into a coverage mask, then blend a textured colour.
        sh, k = 2, 4.0
        cover = np.zeros((s, s), dtype=np.uint8)
        if kind == "sunglasses":
            pts = landmarks[eyes]
            if len(eyes) == 2:
                d = float(np.linalg.norm(pts[1] - pts[0]))
                angle = math.degrees(math.atan2(pts[1, 1] - pts[0, 1], pts[1, 0] - pts[0, 0]))
            else:
                d, angle = 0.35 * side, float(rng.uniform(-10, 10))
            d = max(d, 0.15 * side)
            ax = d * rng.uniform(0.38, 0.5)
            ay = ax * rng.uniform(0.6, 0.85)
            for p in pts:
                cv2.ellipse(cover, (round(p[0] * k), round(p[1] * k)), (round(ax * k), round(ay * k)), angle, 0, 360,
                            255, -1, cv2.LINE_AA, sh)
            if len(eyes) == 2:
                cv2.line(cover, tuple(np.round(pts[0] * k).astype(int)), tuple(np.round(pts[1] * k).astype(int)), 255,
                         max(1, round(0.06 * d)), cv2.LINE_AA, sh)
            colour = rng.uniform(0, 60, 3) + rng.uniform(0, 30)
            alpha = rng.uniform(0.85, 1.0)
        elif kind == "mask":
            p = landmarks[mask_pts]
            hull = cv2.convexHull(p.astype(np.float32)).reshape(-1, 2)
            c = hull.mean(0)
            hull = c + (hull - c) * rng.uniform(1.05, 1.2)
            cv2.fillPoly(cover, [np.round(hull * k).astype(np.int32)], 255, cv2.LINE_AA, sh)
            base = [(235, 235, 235), (170, 200, 230), (160, 210, 190), (60, 60, 70)][int(rng.integers(4))]
            colour = np.clip(np.array(base, dtype=np.float64) + rng.uniform(-20, 20, 3), 0, 255)
            alpha = 1.0
        else:
            w, h = side * rng.uniform(0.25, 0.55), side * rng.uniform(0.25, 0.55)
            cx, cy = rng.uniform(fx0, fx1), rng.uniform(fy0, fy1)
            angle = float(rng.uniform(-45, 45))
            if rng.random() < 0.5:
                rect = cv2.boxPoints(((cx, cy), (w, h), angle))
                cv2.fillPoly(cover, [np.round(rect * k).astype(np.int32)], 255, cv2.LINE_AA, sh)
            else:
                cv2.ellipse(cover, (round(cx * k), round(cy * k)), (round(w / 2 * k), round(h / 2 * k)), angle, 0, 360,
                            255, -1, cv2.LINE_AA, sh)
            skin = rng.random() < 0.5  # a hand: skin tone of random darkness; else any colour
            colour = np.array([224.0, 172.0, 140.0]) * rng.uniform(0.35, 1.1) if skin else rng.uniform(0, 255, 3)
            colour = np.clip(colour, 0, 255)
            alpha = 1.0
        clip = np.zeros_like(cover)
        clip[fy0:fy1 + 1, fx0:fx1 + 1] = 1
        a = (cover * clip).astype(np.float32)[..., None] * (alpha / 255.0)
        # Soft shading so the occluder is not a flat colour: a linear gradient plus mild noise.
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        g = rng.uniform(-25, 25) * (xx - 0.5) + rng.uniform(-25, 25) * (yy - 0.5)
        fill = np.clip(colour[None, None, :] + g[..., None] + rng.normal(0, 4, (s, s, 1)), 0, 255)
        out = image.astype(np.float32) * (1 - a) + fill * a
        image[:] = np.round(out).astype(np.uint8)
        return kind

    # ------------------------------------------------------------------------------------------------------------------
    # photometric

    def colour_matrix(self, rng: np.random.Generator) -> np.ndarray:
        """Random 3 x 3 RGB matrix combining brightness, saturation and hue rotation (contrast is applied apart)."""
        c = self.config
        b = rng.uniform(1 - c.brightness, 1 + c.brightness)
        sat = rng.uniform(1 - c.saturation, 1 + c.saturation)
        a = 2 * math.pi * rng.uniform(-c.hue, c.hue)
        ca, sa = sat * math.cos(a), sat * math.sin(a)
        yiq = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
        return b * (_YIQ2RGB @ yiq @ _RGB2YIQ)

    def photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Colour jitter, grayscale, blur and JPEG on an (S, S, 3) uint8 crop; returns a new uint8 crop."""
        c = self.config
        out = image
        if rng.random() < c.colour_p:
            f = image.astype(np.float32) @ self.colour_matrix(rng).T.astype(np.float32)
            contrast = rng.uniform(1 - c.contrast, 1 + c.contrast)
            mean = float((f @ _RGB2YIQ[0].astype(np.float32)).mean())
            out = np.clip((f - mean) * contrast + mean, 0, 255).round().astype(np.uint8)
        if rng.random() < c.grayscale_p:
            out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        if rng.random() < c.blur_p:
            out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(*c.blur_sigma)))
        if rng.random() < c.jpeg_p:
            q = int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1))
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
            if ok:
                out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return out

    # ------------------------------------------------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, box: np.ndarray, landmarks: np.ndarray, weights: np.ndarray,
                 rng: np.random.Generator, params: GeometricParams | None = None) -> AugmentResult:
        """Augment one face.

        Args:
            image: (H, W, 3) uint8 RGB source image.
            box: (4,) face box ``[x0, y0, x1, y1]`` in image pixels.
            landmarks: (71, 2) image-pixel landmarks (0-based centres).
            weights: (71,) landmark weights.
            rng: random generator (e.g. ``np.random.default_rng([seed, epoch, index])``).
            params: fixed geometric parameters instead of random ones (tests, visualisation).

        Returns:
            :class:`AugmentResult` with the crop, transformed landmarks and weights.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        params = self.sample_geometry(rng) if params is None else params
        m = self.affine(np.asarray(box, dtype=np.float64), params)
        crop = self.warp(image, m)
        lmk = np.asarray(landmarks, dtype=np.float64) @ m[:, :2].T + m[:, 2]
        w = np.asarray(weights, dtype=np.float32)
        if params.flip:
            lmk, w = lmk[_MIRROR], w[_MIRROR]
        face_box = self.face_box(params)
        occluder = None
        if rng.random() < self.config.occlusion_p:
            occluder = self.occlude(crop, lmk, w, face_box, rng)
        crop = self.photometric(crop, rng)
        return AugmentResult(image=crop, landmarks=lmk.astype(np.float32), weights=w.copy(), flipped=params.flip,
                             matrix=m, face_box=face_box, occluder=occluder, angle_deg=params.angle_deg)
