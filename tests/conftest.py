"""Shared fixtures: the ../shared data folder, a tiny model config, the astronaut test photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facerecon.config import FaceReconConfig
from facerecon.morphable.ict import find_ict_facekit

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
AFLW2000_DEV = SHARED / "aflw2000-3d-dev"


def tiny_config(**overrides) -> FaceReconConfig:
    """A small, fast config for unit tests."""
    kw = dict(backbone="test_efficientnet", input_size=64, head_dim=32, head_heads=2, head_layers=1, n_identity=10)
    kw.update(overrides)
    return FaceReconConfig(**kw)


@pytest.fixture(scope="session", autouse=True)
def offline_hub():
    """Tests never use the network: Hugging Face Hub calls fail fast instead of retrying."""

    import huggingface_hub.constants as hc

    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(hc, "HF_HUB_OFFLINE", True)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def make_config():
    """The :func:`tiny_config` factory."""
    return tiny_config


@pytest.fixture(scope="session")
def ict_dir() -> Path:
    found = find_ict_facekit()
    if found is None:
        pytest.skip("ICT-FaceKit not found (set FACERECON_ICT or place it at ../shared/ict-facekit)")
    return found


@pytest.fixture(scope="session")
def tiny_model(ict_dir):
    import torch

    from facerecon.models.facerecon import FaceRecon

    torch.manual_seed(0)
    return FaceRecon(tiny_config()).eval()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """Public-domain photo with one frontal face (scikit-image), (512, 512, 3) uint8 RGB."""
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


@pytest.fixture(scope="session")
def aflw_dev_image() -> Path:
    path = AFLW2000_DEV / "image00002.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path
