"""Model configuration: one flat dataclass that the Hub mixin round-trips through ``config.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from facerecon.errors import ConfigError

#: Facial-component tokens of the attention head and the expression blendshapes each one regresses
#: (by ARKit name prefix of the ICT-FaceKit blendshapes).
COMPONENT_TOKENS: tuple[str, ...] = ("eyes", "brows", "nose", "mouth", "jaw")
COMPONENT_PREFIXES: dict[str, tuple[str, ...]] = {
    "eyes": ("eye",),
    "brows": ("brow",),
    "nose": ("nose", "cheek"),
    "mouth": ("mouth",),
    "jaw": ("jaw",),
}
#: Global tokens: identity, albedo, lighting and pose parameters.
GLOBAL_TOKENS: tuple[str, ...] = ("identity", "albedo", "lighting", "pose")


#: The crop rule the training records' boxes follow and the default ``crop_scale``: crop side = 1.6 x the larger side
#: of the 68 landmarks' bounding box.
CANONICAL_CROP_SCALE = 1.6
#: The crop scales a model, a training dataset and the augmenter accept (inclusive).
CROP_SCALE_RANGE: tuple[float, float] = (1.0, 3.0)


def check_crop_scale(crop_scale: float) -> float:
    """Validate a crop scale (crop side over the larger side of the face's 68-landmark box).

    Args:
        crop_scale: the value to check.

    Returns:
        ``crop_scale`` as a float.

    Raises:
        ConfigError: (a ``ValueError``) when it lies outside :data:`CROP_SCALE_RANGE` or is not a number.
    """
    lo, hi = CROP_SCALE_RANGE
    if isinstance(crop_scale, bool) or not isinstance(crop_scale, (int, float)) or not lo <= crop_scale <= hi:
        raise ConfigError(f"crop_scale must be a number in [{lo:g}, {hi:g}], got {crop_scale!r}")
    return float(crop_scale)


@dataclass
class FaceReconConfig:
    """Architecture, input size and parameter layout of :class:`facerecon.FaceRecon`.

    Attributes:
        backbone: timm model name (any model that supports ``features_only``).
        pretrained_backbone: load ImageNet weights for the backbone through timm (needs network; training only).
        input_size: side of the square face crop in pixels.
        feature_strides: backbone feature levels fed to the head (fused at the finest one).
        head_dim: token and feature width of the attention head.
        head_heads: attention heads.
        head_layers: decoder layers (cross-attention to the feature map, self-attention among tokens, MLP).
        head_dropout: dropout inside the head.
        n_identity: identity coefficients (<= 100 ICT modes after re-orthonormalisation).
        n_expression: expression blendshapes (53 for ICT-FaceKit).
        n_albedo: albedo coefficients (must match the albedo model in use).
        albedo_model: "default" (the bundled learned PCA albedo model), "uniform" (one skin colour + 3 tint modes,
            the placeholder) or the path of an ``albedo_model.safetensors``.
        surface: morphable-model surface, "face" or "head".
        landmarks: which vertices are the 68 landmarks: "ict" (ICT-FaceKit's own), a bundled definition such as
            "refined" (fitted to annotated photos by ``training.fit_landmarks``) or the path of such a JSON file.
        crop_scale: the face crop's side divided by the larger side of the 68 landmarks' bounding box.
        expression_bias: initial logit of the expression weights (sigmoid(-6) = 0.0025: neutral at step 0).
    """

    backbone: str = "mobilenetv4_conv_small"
    pretrained_backbone: bool = False
    input_size: int = 128
    feature_strides: tuple[int, ...] = (16, 32)
    head_dim: int = 128
    head_heads: int = 4
    head_layers: int = 2
    head_dropout: float = 0.0
    n_identity: int = 80
    n_expression: int = 53
    n_albedo: int = 60
    albedo_model: str = "default"
    surface: str = "face"
    landmarks: str = "ict"
    crop_scale: float = CANONICAL_CROP_SCALE
    expression_bias: float = -6.0

    def __post_init__(self) -> None:
        self.feature_strides = tuple(int(s) for s in self.feature_strides)
        if not self.backbone or not isinstance(self.backbone, str):
            raise ConfigError(f"backbone must be a timm model name, got {self.backbone!r}")
        if not 32 <= self.input_size <= 1024 or self.input_size % 32:
            raise ConfigError(f"input_size must be a multiple of 32 in [32, 1024], got {self.input_size}")
        if not self.feature_strides or any(s not in (4, 8, 16, 32) for s in self.feature_strides):
            raise ConfigError(
                f"feature_strides must be a non-empty subset of (4, 8, 16, 32), got {self.feature_strides}")
        if self.head_dim % self.head_heads:
            raise ConfigError(f"head_dim ({self.head_dim}) must be divisible by head_heads ({self.head_heads})")
        if self.head_layers < 1:
            raise ConfigError(f"head_layers must be >= 1, got {self.head_layers}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        if not 1 <= self.n_identity <= 100:
            raise ConfigError(f"n_identity must be in [1, 100] (ICT-FaceKit has 100 modes), got {self.n_identity}")
        if self.n_expression != 53:
            raise ConfigError(f"n_expression must be 53 (the ICT-FaceKit blendshapes), got {self.n_expression}")
        if self.n_albedo < 1:
            raise ConfigError(f"n_albedo must be >= 1, got {self.n_albedo}")
        if self.albedo_model == "uniform" and self.n_albedo > 3:
            raise ConfigError(f"the 'uniform' albedo model has at most 3 components, got n_albedo={self.n_albedo}")
        if self.surface not in ("face", "head"):
            raise ConfigError(f"surface must be 'face' or 'head', got {self.surface!r}")
        if not self.landmarks or not isinstance(self.landmarks, str):
            raise ConfigError(f"landmarks must be 'ict', a bundled definition name or a path, got {self.landmarks!r}")
        check_crop_scale(self.crop_scale)

    @property
    def tokens(self) -> tuple[str, ...]:
        """Names of the head's query tokens, in order."""
        return COMPONENT_TOKENS + GLOBAL_TOKENS

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        d = asdict(self)
        d["feature_strides"] = list(self.feature_strides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaceReconConfig:
        """Build from a dict, rejecting unknown keys with a clear message."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown FaceReconConfig keys: {unknown}")
        return cls(**d)
