"""The app's processing step: one photo in, every picture and file the web page shows out (no Gradio here)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.inference.image_io import downscale_to_max_side, load_image
from facerecon.inference.visual import paste, photo_colors, render_face
from facerecon.visualize import attention_overlay, draw_landmarks, draw_pose_axes

logger = logging.getLogger(__name__)

TEXTURE_MODES = ("photo texture", "albedo", "shaded grey")
#: Photos larger than this (longest side, pixels) are downscaled before processing.
MAX_SIDE = 2048


@dataclass
class DemoResult:
    """Everything the page shows for one photo."""

    annotated: np.ndarray
    mask: np.ndarray
    overlay: np.ndarray
    attention: list[tuple[np.ndarray, str]]
    glb: Path
    files: list[Path]
    params: dict[str, Any]
    message: str
    workdir: Path
    notes: list[str] = field(default_factory=list)


class DemoRunner:
    """Loads the model once (lazily, thread-safe) and turns photos into :class:`DemoResult` objects.

    Args:
        model_source: model folder or Hub repo id (None: the bundled default).
        workdir: folder for per-request output folders (a temp folder by default).
        max_age_s: request folders older than this are deleted on later requests.
        backend: regressor back-end, "torch" or "onnx" (see :class:`facerecon.inference.pipeline.Reconstructor`).
        flip_test: average each face with its mirrored crop's prediction (see :meth:`FaceRecon.forward`).
        shift_test: also average the crops shifted by 7 % of their side in four directions (see
            :meth:`FaceRecon.reconstruct`).
        orientation_test: turn faces lying on their side or upside down upright before regressing them (see
            :meth:`FaceRecon.crop_orientation`).
    """

    def __init__(self, model_source: str | None = None, workdir: str | Path | None = None,
                 max_age_s: float = 3600.0, backend: str = "torch", flip_test: bool = True,
                 shift_test: bool = True, orientation_test: bool = True) -> None:
        self.model_source = model_source
        self.backend = backend
        self.flip_test = flip_test
        self.shift_test = shift_test
        self.orientation_test = orientation_test
        self.workdir = Path(workdir) if workdir else Path(tempfile.gettempdir()) / "facerecon-app"
        self.max_age_s = max_age_s
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The FaceRecon model (loaded on first use)."""
        with self._lock:
            if self._model is None:
                from facerecon.hub import load_model

                self._model = load_model(self.model_source, allow_untrained=True)
            return self._model

    def cleanup(self) -> None:
        """Delete request folders older than ``max_age_s``."""
        if not self.workdir.is_dir():
            return
        now = time.time()
        for d in self.workdir.iterdir():
            try:
                if d.is_dir() and now - d.stat().st_mtime > self.max_age_s:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass

    def __call__(self, image: Any, texture: str = "albedo", neutral: bool = False,
                 all_faces: bool = False) -> DemoResult:
        """Reconstruct the faces in ``image`` and render every output of the page.

        Args:
            image: anything :func:`facerecon.inference.image_io.load_image` accepts.
            texture: one of :data:`TEXTURE_MODES`.
            neutral: export the neutral expression.
            all_faces: reconstruct every face instead of the largest.

        Raises:
            ImageReadError, NoFaceError: with a message fit to show the user.
        """
        if texture not in TEXTURE_MODES:
            raise ValueError(f"texture must be one of {TEXTURE_MODES}, got {texture!r}")
        self.cleanup()
        notes: list[str] = []
        img = load_image(image)
        h0, w0 = img.shape[:2]
        img, factor = downscale_to_max_side(img, MAX_SIDE)
        if factor < 1.0:
            notes.append(f"The {w0}x{h0} photo was downscaled to {img.shape[1]}x{img.shape[0]}.")
        faces = self.model.reconstruct(img, max_faces=None if all_faces else 1, backend=self.backend,
                                       flip_test=self.flip_test, shift_test=self.shift_test,
                                       orientation_test=self.orientation_test)
        workdir = self.workdir / uuid.uuid4().hex
        workdir.mkdir(parents=True)

        annotated = img
        mask = np.zeros(img.shape[:2], dtype=np.uint8)
        overlay = img
        vertex_colors = []
        for face in faces:
            annotated = draw_landmarks(annotated, face.landmarks)
            length = 0.5 * (face.box[2] - face.box[0]) / self.model.config.crop_scale
            annotated = draw_pose_axes(annotated, face.rotation, tuple(face.landmarks[30]), length)
            if texture == "photo texture":
                colours = photo_colors(img, face)[0]
            elif texture == "albedo":
                colours = face.albedo
            else:
                colours = np.clip(face.colors / np.maximum(face.albedo, 1e-3), 0, 1).mean(1, keepdims=True)
                colours = np.repeat(0.8 * colours, 3, axis=1)  # shaded grey: the lighting on a grey albedo
            vertex_colors.append(colours.astype(np.float32))
            fr = render_face(img, face, colours)
            overlay = paste(overlay, fr, fr.image, 0.85 * fr.mask)
            skin_u8 = paste(np.zeros_like(mask)[..., None].repeat(3, 2), fr, np.repeat(fr.skin[..., None], 3, 2),
                            fr.mask)[..., 0]
            mask = np.maximum(mask, skin_u8)
        main = faces[0]
        attention = []
        if main.attention is not None:
            for name, amap in zip(main.token_names, main.attention, strict=True):
                attention.append((attention_overlay(main.crop, amap), name))

        colors = vertex_colors[0]
        glb = main.export(workdir / "face.glb", colors=colors, neutral=neutral, texture=True)
        ply = main.export(workdir / "face.ply", colors=colors, neutral=neutral)
        objdir = workdir / "obj"
        main.export(objdir / "face.obj", colors=colors, neutral=neutral, texture=True)
        obj_zip = workdir / "face_obj.zip"
        with zipfile.ZipFile(obj_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(objdir.iterdir()):  # face.obj, face.mtl and the texture PNG
                zf.write(f, f.name)
        params = {"faces": [f.to_dict() for f in faces]}
        if factor < 1.0:
            params["downscale_factor"] = factor
        json_path = workdir / "face.json"
        json_path.write_text(json.dumps(params, indent=1))
        pose = main.pose
        message = (f"Found {len(faces)} face(s). Largest: yaw {pose['yaw']:.1f}°, pitch {pose['pitch']:.1f}°, "
                   f"roll {pose['roll']:.1f}°.")
        if notes:
            message += " " + " ".join(notes)
        return DemoResult(annotated=annotated, mask=mask, overlay=overlay, attention=attention, glb=glb,
                          files=[glb, obj_zip, ply, json_path], params=params, message=message, workdir=workdir,
                          notes=notes)
