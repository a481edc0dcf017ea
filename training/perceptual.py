"""Perceptual loss: distance between frozen-network features of the re-rendered face and of the photo.

The feature network is chosen by name: ``timm/NAME`` (a timm model, ImageNet weights through timm) or
``hf/REPO`` (a transformers vision model, e.g. ``hf/facebook/dinov2-small``). Pretrained weights are loaded when they
can be (network or local cache). When they cannot (offline, tests), the network falls back to a randomly
initialised, frozen copy and says so with a WARNING naming the network and the reason; ``require_pretrained=True``
turns the fallback into an error. Random frozen convolutional features still compare image structure, but they are
a weaker prior than pretrained ones: check the log of a training run.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """Cosine distance of multi-level features of a frozen network (``1 - cos`` per level, averaged).

    Args:
        network: ``timm/NAME`` or ``hf/REPO_ID``.
        require_pretrained: raise instead of falling back to random weights.
        input_size: images are resized to this side before the network.
    """

    def __init__(self, network: str = "timm/resnet18", require_pretrained: bool = False, input_size: int = 112) -> None:
        super().__init__()
        self.network = network
        self.input_size = input_size
        self.pretrained = False
        kind, _, name = network.partition("/")
        if kind == "timm":
            self.body = self._timm(name, require_pretrained)
        elif kind == "hf":
            self.body = self._hf(name, require_pretrained)
        else:
            raise ValueError(f"perceptual network must be 'timm/NAME' or 'hf/REPO_ID', got {network!r}")
        self.body.eval()
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _fallback(self, reason: Exception, require: bool) -> None:
        if require:
            raise RuntimeError(f"pretrained weights for the perceptual network '{self.network}' are unavailable: "
                               f"{reason}") from reason
        logger.warning("Perceptual loss: pretrained weights for '%s' are unavailable (%s: %s); using a RANDOMLY "
                       "INITIALISED frozen network instead", self.network, type(reason).__name__, reason)

    def _timm(self, name: str, require: bool) -> nn.Module:
        import timm

        try:
            body = timm.create_model(name, pretrained=True, features_only=True, out_indices=(1, 2, 3))
            self.pretrained = True
        except Exception as err:  # offline, unknown tag, no cached weights
            self._fallback(err, require)
            body = timm.create_model(name, pretrained=False, features_only=True, out_indices=(1, 2, 3))
        self._kind = "timm"
        return body

    def _hf(self, repo: str, require: bool) -> nn.Module:
        from transformers import AutoConfig, AutoModel

        try:
            body = AutoModel.from_pretrained(repo)
            self.pretrained = True
        except Exception as err:
            self._fallback(err, require)
            try:
                body = AutoModel.from_config(AutoConfig.from_pretrained(repo))
            except Exception as err2:
                raise RuntimeError(f"perceptual network '{repo}': neither weights nor config are available offline "
                                   f"({err2}); use a timm network such as 'timm/resnet18'") from err2
        self._kind = "hf"
        return body

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of (B, 3, H, W) RGB images in [0, 1]."""
        x = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self._kind == "timm":
            return list(self.body(x))
        out = self.body(pixel_values=x, output_hidden_states=True)
        return [h for h in out.hidden_states[-3:]]

    def forward(self, rendered: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Perceptual distance.

        Args:
            rendered: (B, 3, H, W) re-rendered faces in [0, 1].
            photo: (B, 3, H, W) photos in [0, 1].
            mask: optional (B, 1, H, W) face mask: outside it the photo replaces the render, so only the face
                region differs.

        Returns:
            Scalar loss in [0, 2].
        """
        if mask is not None:
            rendered = rendered * mask + photo * (1 - mask)
        fr, fp = self.features(rendered), self.features(photo.detach())
        losses = []
        for a, b in zip(fr, fp, strict=True):
            a = a.flatten(2) if a.ndim == 4 else a.transpose(1, 2)
            b = b.flatten(2) if b.ndim == 4 else b.transpose(1, 2)
            losses.append((1 - F.cosine_similarity(a, b, dim=1)).mean())
        return torch.stack(losses).mean()
