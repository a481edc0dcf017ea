"""Exceptions raised by facerecon. Each names what was wrong and, where possible, how to fix it."""

from __future__ import annotations


class FaceReconError(Exception):
    """Base class of all facerecon errors."""


class ImageReadError(FaceReconError, ValueError):
    """The input could not be read as an image (unreadable bytes, empty file, unsupported array, too small)."""


class NoFaceError(FaceReconError, RuntimeError):
    """No face was found in the image."""


class MorphableModelNotFoundError(FaceReconError, FileNotFoundError):
    """The ICT-FaceKit data that the morphable model is built from could not be located."""


class ConfigError(FaceReconError, ValueError):
    """A configuration value is invalid."""


class ModelDownloadError(FaceReconError, OSError):
    """A model could not be fetched from the Hugging Face Hub (offline, unknown repo, no access)."""
