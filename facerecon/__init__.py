"""facerecon: open, CPU-friendly 3D face reconstruction from a single photo.

Heavy modules are imported lazily: ``import facerecon`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "FaceRecon": "facerecon.models.facerecon",
    "FaceReconOutput": "facerecon.models.facerecon",
    "FaceParameters": "facerecon.models.facerecon",
    "FaceReconConfig": "facerecon.config",
    "Reconstruction": "facerecon.inference.pipeline",
    "Reconstructor": "facerecon.inference.pipeline",
    "FaceDetector": "facerecon.inference.detect",
    "load_image": "facerecon.inference.image_io",
    "load_model": "facerecon.hub",
    "DEFAULT_MODEL_DIR": "facerecon.hub",
    "FaceReconError": "facerecon.errors",
    "ImageReadError": "facerecon.errors",
    "NoFaceError": "facerecon.errors",
    "MorphableModelNotFoundError": "facerecon.errors",
    "ModelDownloadError": "facerecon.errors",
}

__all__ = [
    "DEFAULT_MODEL_DIR",
    "FaceDetector",
    "FaceParameters",
    "FaceRecon",
    "FaceReconConfig",
    "FaceReconError",
    "FaceReconOutput",
    "ImageReadError",
    "ModelDownloadError",
    "MorphableModelNotFoundError",
    "NoFaceError",
    "Reconstruction",
    "Reconstructor",
    "load_image",
    "load_model",
]

if TYPE_CHECKING:
    from facerecon.config import FaceReconConfig
    from facerecon.errors import (
        FaceReconError,
        ImageReadError,
        ModelDownloadError,
        MorphableModelNotFoundError,
        NoFaceError,
    )
    from facerecon.hub import DEFAULT_MODEL_DIR, load_model
    from facerecon.inference.detect import FaceDetector
    from facerecon.inference.image_io import load_image
    from facerecon.inference.pipeline import Reconstruction, Reconstructor
    from facerecon.models.facerecon import FaceParameters, FaceRecon, FaceReconOutput


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facerecon' has no attribute {name!r}")
