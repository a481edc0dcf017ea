"""Inference pipeline: load -> detect -> crop -> regress -> refine crop -> reconstruct (-> export).

Each stage is a small callable; :class:`Reconstructor` wires them together and ``app.py`` and the CLI only call it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from facerecon.config import CANONICAL_CROP_SCALE
from facerecon.errors import NoFaceError
from facerecon.geometry import box_from_points, crop_to_image, view_boxes
from facerecon.inference.crop import crop_face, square_box
from facerecon.inference.export import MeshExport
from facerecon.inference.image_io import load_image

if TYPE_CHECKING:
    from facerecon.inference.detect import FaceBox, FaceDetector
    from facerecon.models.facerecon import FaceRecon, FaceReconOutput

logger = logging.getLogger(__name__)

#: Regressor back-ends of :class:`Reconstructor`.
BACKENDS = ("torch", "onnx")


@dataclass
class Reconstruction(MeshExport):
    """One reconstructed face, as numpy arrays (float32 unless stated).

    Convention: image pixels are 0-based pixel centres of the input photo (after EXIF orientation); 3D positions
    are mm; ``vertices`` are in the camera frame (x right, y down, z away; weak perspective); angles are degrees
    (yaw > 0 turned to image left, pitch > 0 looking up, roll > 0 clockwise, AFLW2000-3D convention).

    Attributes:
        vertices: (N, 3) posed mesh in the camera frame (mm).
        vertices_view: (N, 3) posed mesh in the view frame (mm, +y up, +z towards the camera, head origin at 0):
            what the exports contain.
        vertices_neutral: (N, 3) the same face with a neutral expression (view frame).
        vertices_image: (N, 3) vertices in image pixels (x, y) with depth in pixels (z, larger = farther).
        faces: (F, 3) int64 triangles.
        landmarks: (68, 2) 2D landmarks in image pixels (iBUG order).
        landmarks_3d: (68, 3) 3D landmarks in the camera frame (mm).
        yaw, pitch, roll: head pose in degrees.
        box: (4,) the refined square crop box [x0, y0, x1, y1] the model saw, in image pixels.
        detection: the detector's box (or the box passed in), or None.
        identity, expression, albedo_coeffs: coefficients; lighting (9, 3) SH coefficients.
        expression_names: names of the 53 blendshapes.
        albedo: (N, 3) per-vertex albedo in [0, 1]; colors: (N, 3) shaded colours in [0, 1].
        scale: crop pixels per mm; image_scale: image pixels per mm.
        uvs: (T, 2) and face_uvs (F, 3): texture coordinates of the mesh.
        image_size: (width, height) of the photo.
        rotation: (3, 3) head rotation (model frame -> view frame).
        crop: (S, S, 3) uint8 RGB crop the model saw (the refined box).
        attention: (T, h, w) attention maps of the head's tokens over the crop; token_names their names.
    """

    vertices: np.ndarray
    vertices_view: np.ndarray
    vertices_neutral: np.ndarray
    vertices_image: np.ndarray
    faces: np.ndarray
    landmarks: np.ndarray
    landmarks_3d: np.ndarray
    yaw: float
    pitch: float
    roll: float
    box: np.ndarray
    detection: np.ndarray | None
    identity: np.ndarray
    expression: np.ndarray
    expression_names: tuple[str, ...]
    albedo_coeffs: np.ndarray
    lighting: np.ndarray
    albedo: np.ndarray
    colors: np.ndarray
    scale: float
    image_scale: float
    uvs: np.ndarray
    face_uvs: np.ndarray
    image_size: tuple[int, int]
    rotation: np.ndarray
    crop: np.ndarray
    attention: np.ndarray | None
    token_names: tuple[str, ...]

    @property
    def pose(self) -> dict[str, float]:
        """Head pose in degrees: {"yaw", "pitch", "roll"}."""
        return {"yaw": self.yaw, "pitch": self.pitch, "roll": self.roll}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters (no mesh arrays)."""
        return {
            "image_size": list(self.image_size),
            "box": self.box.round(3).tolist(),
            "detection": None if self.detection is None else self.detection.round(3).tolist(),
            "pose_degrees": {k: round(v, 4) for k, v in self.pose.items()},
            "landmarks_2d": self.landmarks.round(3).tolist(),
            "landmarks_3d_mm": self.landmarks_3d.round(3).tolist(),
            "identity": self.identity.round(5).tolist(),
            "expression": {n: round(float(v), 5) for n, v in zip(self.expression_names, self.expression, strict=True)},
            "albedo": self.albedo_coeffs.round(5).tolist(),
            "lighting_sh": self.lighting.round(5).tolist(),
            "scale_px_per_mm": round(self.scale, 6),
            "image_scale_px_per_mm": round(self.image_scale, 6),
            "n_vertices": int(self.vertices.shape[0]),
            "n_faces": int(self.faces.shape[0]),
            "conventions": {
                "pixels": "0-based pixel centres of the (EXIF-oriented) input image",
                "pose": "degrees, AFLW2000-3D convention: yaw>0 faces image left, pitch>0 looks up, roll>0 clockwise",
                "mesh": "mm; exports use the view frame (+x image right, +y up, +z towards the camera)",
            },
        }


#: Initial crop side over the Haar detector box side for a model with the canonical ``crop_scale`` (1.6).
DETECTION_SCALE = 1.45


#: Smallest detector score (:attr:`FaceBox.score`) of a face found only in the turned photo
#: (:meth:`Reconstructor.detect`): the cascades fire at 0.26-0.45 on some turned photos without a face
#: (scikit-image's coffee, rocket and camera photos), while the astronaut photo's face lying on its side scores 0.94.
TURNED_MIN_SCORE = 0.5


def unturn_box(box: np.ndarray, turns: int, shape: tuple[int, int]) -> np.ndarray:
    """Map a box found in ``np.rot90(image, turns)`` back to ``image``.

    Args:
        box: (4,) ``[x0, y0, x1, y1]`` in the turned image's pixels.
        turns: counter-clockwise quarter turns of the image (``np.rot90(image, turns)``).
        shape: ``(height, width)`` of the original image.

    Returns:
        (4,) the box in the original image's pixels (quarter turns keep boxes axis-aligned).

    Convention: continuous edge coordinates, 0-based pixel centres; one turn maps pixel ``(x, y)`` of an image of
    width ``W`` to ``(y, W - 1 - x)``.
    """
    b = np.asarray(box, dtype=np.float64)
    h, w = shape
    widths = [w if j % 2 == 0 else h for j in range(4)]  # width of the image after j turns
    for j in range(int(turns) % 4, 0, -1):  # undo turn j: (x', y') -> (W - 1 - y', x'), W of the image before it
        x0, y0, x1, y1 = b
        width = widths[j - 1]
        b = np.array([width - 1 - y1, x0, width - 1 - y0, x1])
    return b


class Reconstructor:
    """Callable pipeline around a :class:`FaceRecon` model.

    Args:
        model: the model (put in eval mode here).
        detector: face detector; a :class:`FaceDetector` is created on first use when None.
        refine_steps: how many times to re-crop from the predicted landmarks (0 = use the detection crop). Each
            step but the last adds a landmarks-only pass (about one more flip-test forward per face). 2 (the
            default) against 1, paired per face: on the own validation split's photos (1,583 faces found) the
            NME fell by 0.10 +/- 0.06 % (1.6 +/- 0.8 % at |yaw| > 90, no change below 60), on the AFLW2000-3D dev
            photos by 0.9 +/- 0.4 % at |yaw| > 60 (``training.evaluate --refine-steps``); 3 against 2 changed the
            own validation NME by -0.01 +/- 0.06 %.
        detection_scale: crop side relative to the detector box side; None for ``1.45 * crop_scale / 1.6`` (the
            model's ``crop_scale``). Haar boxes run from forehead to chin: the 68 landmarks span about 0.83 of the
            box side, centred about 0.13 of it below the box centre (measured on AFLW2000-3D dev), so 1.45 gives
            about 1.75x the landmark extent for a 1.6 model, 1.09x its crop and inside its training range.
        detection_shift: downward shift of the crop centre in units of the detector box height.
        backend: "torch", or "onnx" to run the regressor with onnxruntime (the mesh is still decoded in torch).
        onnx_path: the exported regressor for the ONNX backend (default: exported once into the cache).
        onnx_threads: onnxruntime intra-op threads (None: one per core).
        fuse: with the torch back-end, run a BatchNorm-folded copy of the backbone (same outputs to ~1e-5, about
            a fifth faster on the CPU); it is rebuilt when the model's backbone weights change.
        flip_test: also regress the mirrored crops and average (see :meth:`FaceRecon.forward`): about twice the
            regressor's time, more accurate landmarks and pose.
        shift_test: also regress the crops shifted by 7 % of their side in four directions and average
            (:data:`facerecon.models.facerecon.SHIFT_TEST_VIEWS`) in the final pass: about five times that pass's
            regressor time (ten with ``flip_test``), more accurate landmarks and pose.
        placement_views: also use the shift test's views in the crop-placement passes (those before the last when
            ``refine_steps > 0``). Off by default: on the AFLW2000-3D dev photos with detection (one refine step)
            the landmark NME changed by -0.01 +/- 0.01 / +0.02 +/- 0.02 / +0.16 +/- 0.14 % per yaw bin (paired,
            noise) while each pipeline call took 4-10 ms longer.
        orientation_test: find and regress faces lying on their side or upside down. When the detector finds no
            face in the photo, it also looks in the photo turned by 90, 270 and 180 degrees (in that order), and the
            faces it finds there are regressed with their crops turned upright, the results mapped back. A face box
            given by the caller gets the model's orientation test instead (:meth:`FaceRecon.crop_orientation`:
            quarter turns only, extra passes only for the crops whose flip disagreement flags them). Faces the
            detector finds upright are regressed as they are.
    """

    def __init__(self, model: FaceRecon, detector: FaceDetector | None = None, refine_steps: int = 2,
                 detection_scale: float | None = None, detection_shift: float = 0.13, backend: str = "torch",
                 onnx_path: str | os.PathLike | None = None, fuse: bool = True,
                 onnx_threads: int | None = None, flip_test: bool = False, shift_test: bool = False,
                 placement_views: bool = False, orientation_test: bool = False) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.model = model.eval()
        self.backend = backend
        self.fuse = fuse
        self.flip_test = bool(flip_test)
        self.shift_test = bool(shift_test)
        self.orientation_test = bool(orientation_test)
        if shift_test:
            from facerecon.models.facerecon import SHIFT_TEST_VIEWS

            self.views: torch.Tensor | None = torch.tensor(SHIFT_TEST_VIEWS)
        else:
            self.views = None
        self._fused: tuple[int, torch.device, torch.nn.Module] | None = None
        self._onnx = None
        if backend == "onnx":
            from facerecon.inference.onnx_backend import OnnxRegressor, cached_onnx_path

            self._onnx = OnnxRegressor(onnx_path or cached_onnx_path(model), threads=onnx_threads)
        self._detector = detector
        self._lock = threading.Lock()
        self.refine_steps = refine_steps
        self.placement_views = bool(placement_views)
        if detection_scale is None:
            detection_scale = DETECTION_SCALE * model.config.crop_scale / CANONICAL_CROP_SCALE
        self.detection_scale = float(detection_scale)
        self.detection_shift = detection_shift

    @property
    def detector(self) -> FaceDetector:
        """The face detector (created lazily)."""
        with self._lock:
            if self._detector is None:
                from facerecon.inference.detect import FaceDetector

                self._detector = FaceDetector()
            return self._detector

    def crop_from_detection(self, box: FaceBox | np.ndarray | list[float]) -> np.ndarray:
        """Initial square crop box from a detector box."""
        b = np.asarray(box.as_array() if hasattr(box, "as_array") else box, dtype=np.float64)
        if b.shape != (4,) or not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
            raise ValueError(f"a face box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {b.tolist()}")
        w, h = b[2] - b[0], b[3] - b[1]
        center = (0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3]) + self.detection_shift * h)
        return square_box(center, self.detection_scale * max(w, h))

    def forward(self, crops: torch.Tensor, landmarks_only: bool = False, use_views: bool = True,
                turns: torch.Tensor | None = None) -> FaceReconOutput:
        """Run the regressor of the chosen back-end on crops in [0, 1] and decode (no gradients).

        ``crops`` is (B, 3, S, S), or (B, V, 3, S, S) with the shift test (the crops of :attr:`views`) unless
        ``use_views`` is False. ``turns`` (B,) are known quarter turns that bring the faces upright (see
        :meth:`FaceRecon.forward`); without them the model's orientation test runs when :attr:`orientation_test`.
        """
        views = self.views if use_views else None
        test = self.orientation_test and turns is None
        if self._onnx is not None:
            with torch.inference_mode():
                params, attention = self.model.regress_crops(crops, self._onnx, self.flip_test, views, test, turns)
                return self.model.decode(params, attention=attention, landmarks_only=landmarks_only)
        backbone = self._fused_backbone()  # built outside inference mode: its tensors are ordinary ones
        with torch.inference_mode():
            return self.model(crops, landmarks_only=landmarks_only, backbone=backbone, flip_test=self.flip_test,
                              views=views, orientation_test=test, turns=turns)

    def _fused_backbone(self) -> torch.nn.Module | None:
        """The BatchNorm-folded backbone copy (rebuilt when the weights or the device change), or None."""
        if not self.fuse:
            return None
        from facerecon.models.fuse import fold_batchnorm, parameter_version

        backbone = self.model.backbone
        version, device = parameter_version(backbone), next(backbone.parameters()).device
        with self._lock:
            if self._fused is None or self._fused[:2] != (version, device):
                fused, n = fold_batchnorm(backbone)
                logger.debug("folded %d BatchNorm layers of the backbone", n)
                self._fused = (version, device, fused)
            return self._fused[2]

    def regress(self, image: np.ndarray, boxes: np.ndarray, landmarks_only: bool = False,
                use_views: bool = True, turns: torch.Tensor | None = None
                ) -> tuple[FaceReconOutput, torch.Tensor, np.ndarray]:
        """Run the model on the crops of ``boxes`` (K, 4) (``landmarks_only`` skips the dense mesh).

        ``use_views=False`` skips the shift test's views in this pass (the crop-placement passes); ``turns`` (K,) are
        known quarter turns that bring the faces upright (see :meth:`forward`).

        Returns:
            The model output, (K, 68, 2) landmarks in image pixels and the (K, S, S, 3) uint8 crops.
        """
        size = self.model.config.input_size
        crops = np.stack([crop_face(image, b, size) for b in boxes])
        device = next(self.model.parameters()).device
        if self.views is None or not use_views:
            x = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        else:  # view 0 is the crop itself
            vb = view_boxes(torch.as_tensor(boxes, dtype=torch.float64), self.views.double()).numpy()
            views = np.stack([[crops[k]] + [crop_face(image, b, size) for b in vb[k, 1:]] for k in range(len(boxes))])
            x = torch.from_numpy(views).to(device).permute(0, 1, 4, 2, 3).float().div_(255.0)
        out = self.forward(x, landmarks_only=landmarks_only, use_views=use_views, turns=turns)
        box_t = torch.as_tensor(boxes, dtype=torch.float32, device=device)
        return out, crop_to_image(out.landmarks_2d.float(), box_t, size), crops

    def __call__(self, image: Any, box: Any = None, max_faces: int | None = None) -> list[Reconstruction]:
        """Reconstruct the faces of a photo.

        Args:
            image: path, bytes, PIL image or RGB numpy array (see :func:`facerecon.inference.image_io.load_image`).
            box: optional face box [x0, y0, x1, y1] in image pixels (skips detection).
            max_faces: keep at most this many faces (largest first).

        Returns:
            One :class:`Reconstruction` per face, largest first.

        Raises:
            NoFaceError: no face was detected.
            ImageReadError: the input is not a readable image.
        """
        img = load_image(image)
        h, w = img.shape[:2]
        turns: torch.Tensor | None = None  # None: a given box (the model's orientation test decides)
        if box is not None:
            detections = [np.asarray(box, dtype=np.float64)]
            boxes = np.stack([self.crop_from_detection(b) for b in detections])
        else:
            detections, boxes, k = self.detect(img)
            if not detections:
                raise NoFaceError(f"no face found in the {w}x{h} image; try a larger, frontal, well-lit face or "
                                  "pass a face box")
            turns = torch.full((len(detections),), k, dtype=torch.long)
        if max_faces is not None:
            detections, boxes = detections[:max_faces], boxes[:max_faces]
            turns = None if turns is None else turns[:max_faces]
        # Passes before the last only need landmarks to place the next crop (and, by default, no shift test views).
        steps = self.refine_steps
        out, lmk, crops = self.regress(img, boxes, landmarks_only=steps > 0,
                                       use_views=steps == 0 or self.placement_views, turns=turns)
        for k in range(steps):
            boxes = box_from_points(lmk, scale=self.model.config.crop_scale).double().cpu().numpy()
            last = k == steps - 1
            out, lmk, crops = self.regress(img, boxes, landmarks_only=not last, use_views=last or self.placement_views,
                                           turns=turns)
        return [self._result(out, k, lmk[k], boxes[k], detections[k], (w, h), crops[k]) for k in range(len(boxes))]

    def detect(self, image: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, int]:
        """Detector boxes, their crop boxes and the quarter turns of the photo they were found in.

        The detector runs on the photo; when it finds nothing and :attr:`orientation_test` is on, on the photo turned
        by 1, 2 and 3 quarter turns (``np.rot90``, counter-clockwise), keeping detections that score at least
        :data:`TURNED_MIN_SCORE`, and the turn whose strongest detection scores highest wins. The crop box is placed
        in the frame the face was found in (:meth:`crop_from_detection` shifts it towards the chin) and both boxes
        are mapped back to the photo (:func:`unturn_box`).

        Returns:
            Detector boxes and (K, 4) crop boxes in photo pixels (empty when no face was found), and ``k``: turning
            a crop by ``k`` quarter turns brings its face upright.
        """
        found, k = self.detector(image), 0
        if not found and self.orientation_test:
            candidates = [([f for f in self.detector(np.ascontiguousarray(np.rot90(image, t)))
                            if f.score >= TURNED_MIN_SCORE], t) for t in (1, 2, 3)]
            candidates = [c for c in candidates if c[0]]
            if candidates:
                found, k = max(candidates, key=lambda c: max(f.score for f in c[0]))
        if not found:
            return [], np.zeros((0, 4)), 0
        shape = image.shape[:2]
        detections = [unturn_box(f.as_array(), k, shape) for f in found]
        boxes = np.stack([unturn_box(self.crop_from_detection(f.as_array()), k, shape) for f in found])
        return detections, boxes, k

    def _result(self, out: FaceReconOutput, k: int, landmarks: torch.Tensor, box: np.ndarray,
                detection: np.ndarray | None, image_size: tuple[int, int], crop: np.ndarray) -> Reconstruction:
        model = self.model
        size = model.config.input_size
        p = out.params
        crop_px_per_img_px = size / (box[2] - box[0])
        image_scale = float(p.scale[k]) / crop_px_per_img_px
        with torch.inference_mode():
            neutral = model.morphable.shape(p.identity[k:k + 1], torch.zeros_like(p.expression[k:k + 1]))
            rot = p.rotation[k]
            view = out.shape[k] @ rot.T
            neutral_view = neutral[0] @ rot.T
            cam = out.vertices[k]
            uv = model.project(cam[None], p.scale[k:k + 1])
            box_t = torch.as_tensor(box, dtype=uv.dtype, device=uv.device)[None]
            xy = crop_to_image(uv, box_t, size)[0]
            z = cam[:, 2:] * image_scale
            vertices_image = torch.cat([xy, z], dim=1)
        yaw, pitch, roll = np.degrees(out.euler[k].double().cpu().numpy()).tolist()

        def np32(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        return Reconstruction(
            vertices=np32(cam), vertices_view=np32(view), vertices_neutral=np32(neutral_view),
            vertices_image=np32(vertices_image), faces=model.morphable.faces.cpu().numpy(),
            landmarks=np32(landmarks), landmarks_3d=np32(out.landmarks_3d[k]), yaw=yaw, pitch=pitch, roll=roll,
            box=np.asarray(box, dtype=np.float64), detection=None if detection is None else np.asarray(detection),
            identity=np32(p.identity[k]), expression=np32(p.expression[k]),
            expression_names=tuple(model.morphable.expression_names), albedo_coeffs=np32(p.albedo[k]),
            lighting=np32(p.lighting[k]), albedo=np32(out.albedo[k]), colors=np32(out.colors[k]),
            scale=float(p.scale[k]), image_scale=image_scale, uvs=model.morphable.uvs.cpu().numpy(),
            face_uvs=model.morphable.face_uvs.cpu().numpy(), image_size=image_size, rotation=np32(rot),
            crop=crop, attention=None if out.attention is None else np32(out.attention[k]),
            token_names=tuple(model.token_names),
        )
