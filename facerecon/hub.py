"""Where the default model lives, and loading a model by name, folder or Hub repo id."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facerecon.models.facerecon import FaceRecon

logger = logging.getLogger(__name__)

#: The trained default model that ships inside the package (config.json + model.safetensors).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "pretrained" / "facerecon-default"
#: Environment variable that overrides the default model (a folder or a Hub repo id).
ENV_MODEL = "FACERECON_MODEL"


def default_model_source() -> str:
    """The model used when none is named: ``FACERECON_MODEL``, else the bundled default folder."""
    return os.environ.get(ENV_MODEL) or str(DEFAULT_MODEL_DIR)


def load_model(source: str | os.PathLike | None = None, *, device: str = "cpu", allow_untrained: bool = False,
               **kwargs: object) -> FaceRecon:
    """Load a FaceRecon model for inference.

    Args:
        source: a folder saved with ``save_pretrained``, a Hub repo id, or None for :func:`default_model_source`.
        device: torch device to put the model on.
        allow_untrained: when the bundled default weights are missing, return an untrained model (it predicts the
            mean face) with a warning instead of raising.
        **kwargs: forwarded to :meth:`FaceRecon.from_pretrained` (e.g. ``ict_path``).

    Returns:
        The model in eval mode.
    """
    from facerecon.models.facerecon import FaceRecon

    src = str(source) if source is not None else default_model_source()
    if Path(src) == DEFAULT_MODEL_DIR and not (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        if not allow_untrained:
            raise FileNotFoundError(f"the bundled default model is missing from {DEFAULT_MODEL_DIR}; reinstall "
                                    "facerecon or pass a model folder / Hub repo id")
        logger.warning("No trained default model at %s: using an UNTRAINED model (it predicts the mean face)",
                       DEFAULT_MODEL_DIR)
        model = FaceRecon(**kwargs)
    else:
        model = FaceRecon.from_pretrained(src, strict=True, **kwargs)
    return model.to(device).eval()
