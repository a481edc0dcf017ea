"""FaceRecon: backbone + component attention head + morphable model + weak-perspective camera."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from facerecon.config import COMPONENT_PREFIXES, COMPONENT_TOKENS, FaceReconConfig
from facerecon.errors import ModelDownloadError
from facerecon.geometry import (
    SH_MIRROR_X_SIGNS,
    matrix_to_euler,
    mean_rotation,
    mirror_rotation,
    model_to_camera,
    rotation_6d_to_matrix,
    sh_quarter_turn,
    sh_shading,
    weak_perspective_project,
)
from facerecon.models.head import Backbone, ComponentAttentionHead
from facerecon.morphable.albedo import load_albedo_model
from facerecon.morphable.ict import MIRROR_68, load_morphable_data
from facerecon.morphable.landmarks import load_landmark_index
from facerecon.morphable.model import AlbedoModel, MorphableModel

if TYPE_CHECKING:
    from facerecon.inference.pipeline import Reconstruction

logger = logging.getLogger(__name__)

#: The shift test's views ``(m, dx, dy)`` (see :func:`facerecon.geometry.view_boxes`): the crop itself and the crop
#: shifted by 7 % of its side left, right, up and down. Chosen on the training side's validation split
#: (``benchmarks/own_val.py --shift-test``): of shifts 3-10 % and scale multipliers 0.9-1.1 in sets of 2-9 views, the
#: five views at 7 % scored best (NME 0.05461 -> 0.05355 with the flip test for v26); four diagonal views at 5 % or
#: nine views did not score better.
SHIFT_TEST_VIEWS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0), (1.0, 0.07, 0.0), (1.0, -0.07, 0.0), (1.0, 0.0, 0.07), (1.0, 0.0, -0.07))

#: The orientation test (:meth:`FaceRecon.crop_orientation`): a crop whose landmarks disagree with its mirror
#: image's by more than ``ORIENTATION_GATE`` of the crop side is also regressed turned by the quarter turns in
#: ``ORIENTATION_TURNS`` (90 and 270 degrees), and the better turn is used when its own disagreement passes the gate
#: (is below ``ORIENTATION_GATE``) and is below ``ORIENTATION_RATIO`` times the crop's. Chosen on the training side's
#: validation split (``benchmarks/orientation_probe.py``, ``benchmarks/orientation_rule.py``): upright crops disagree
#: by 0.014 (median for v38; 0.027 at the 90th percentile), crops turned by 90 degrees by 0.11. With v41 and the
#: flip + shift test, the rule turns 4 of the 1,732 validation crops, all four faces lying on their side, and the NME
#: falls from 0.04873 (no orientation test) to 0.04766 (0.04757 if every crop took its best turn); the earlier rule
#: (ratio 0.5, no bound on the turned crop's disagreement) also turned 3 upright faces (NME 0.04872). Half turns are
#: not tried: the validation split has no upside-down faces, and the one crop v43 turned by 180 degrees was an upright
#: face (NME 0.116 -> 0.714); upside-down photos are still found by the pipeline's detector in the turned photo.
ORIENTATION_GATE = 0.03
ORIENTATION_RATIO = 0.4
ORIENTATION_TURNS: tuple[int, ...] = (1, 3)

MODEL_CARD_TEMPLATE = """
---
{{ card_data }}
---

# facerecon model

Single-photo 3D face reconstruction with [facerecon](https://github.com/facerecon/facerecon): a timm backbone with
an attention head regresses ICT-FaceKit identity and expression coefficients, albedo, spherical-harmonics lighting
and head pose.

```python
from facerecon import FaceRecon

model = FaceRecon.from_pretrained("REPO_OR_FOLDER")
result = model.reconstruct("photo.jpg")[0]
result.export("face.glb")
```

The morphable model is built at run time from ICT-FaceKit (MIT licence, Copyright (c) 2020 USC Institute for
Creative Technologies, https://github.com/ICT-VGL/ICT-FaceKit); it is not part of these weights.
"""


@dataclass
class FaceParameters:
    """Regressed face parameters (B = batch).

    Convention: rotation acts on model-frame points (y up); translation in mm in the camera frame (x right,
    y down, z away); scale in crop pixels per mm (weak perspective).

    Attributes:
        identity: (B, K) identity coefficients, ~N(0, 1).
        expression: (B, 53) blendshape weights in [0, 1].
        albedo: (B, Ka) albedo coefficients, ~N(0, 1).
        lighting: (B, 9, 3) spherical-harmonics irradiance coefficients per RGB channel (view frame).
        rotation: (B, 3, 3) head rotation.
        translation: (B, 3) mm (z is 0: weak perspective has no absolute depth).
        scale: (B,) pixels per mm.
    """

    identity: torch.Tensor
    expression: torch.Tensor
    albedo: torch.Tensor
    lighting: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    scale: torch.Tensor

    def detach(self) -> FaceParameters:
        """A copy with every tensor detached."""
        return FaceParameters(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def __getitem__(self, index: slice | torch.Tensor) -> FaceParameters:
        """The parameters of a subset of the batch (``index`` selects along the batch dimension)."""
        return FaceParameters(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def average_parameters(*params: FaceParameters) -> FaceParameters:
    """Average several predictions of the same faces.

    Coefficients, lighting and translation are averaged arithmetically, the scale geometrically and the rotation
    with :func:`facerecon.geometry.mean_rotation` (chordal mean), so the result is a valid :class:`FaceParameters`.

    Args:
        *params: one or more :class:`FaceParameters` of the same batch size B.

    Returns:
        :class:`FaceParameters` of batch size B.
    """
    if not params:
        raise ValueError("average_parameters needs at least one FaceParameters")
    sizes = {p.scale.shape[0] for p in params}
    if len(sizes) != 1:
        raise ValueError(f"all parameters must have the same batch size, got {sorted(sizes)}")

    def mean(name: str) -> torch.Tensor:
        return torch.stack([getattr(p, name) for p in params]).mean(0)

    return FaceParameters(
        identity=mean("identity"), expression=mean("expression"), albedo=mean("albedo"), lighting=mean("lighting"),
        rotation=mean_rotation(torch.stack([p.rotation for p in params], dim=-3)),
        translation=mean("translation"), scale=torch.stack([p.scale.log() for p in params]).mean(0).exp())


@dataclass
class FaceReconOutput:
    """Everything :meth:`FaceRecon.forward` predicts for a batch of crops.

    Convention: vertices and 3D landmarks in mm in the camera frame (x right, y down, z away, origin at the
    crop's principal point at depth 0); 2D landmarks in input-crop pixels with 0-based pixel centres; angles
    in radians (yaw, pitch, roll in the AFLW2000-3D convention, see :func:`facerecon.geometry.matrix_to_euler`).

    Attributes:
        params: the regressed :class:`FaceParameters`.
        euler: (B, 3) yaw, pitch, roll in radians.
        shape: (B, N, 3) the face in the model frame before pose (mm).
        vertices: (B, N, 3) posed vertices in the camera frame (mm).
        normals: (B, N, 3) unit vertex normals in the view frame (y up, z towards the camera).
        landmarks_3d: (B, 68, 3) posed landmarks (mm, camera frame).
        landmarks_2d: (B, 68, 2) landmarks in input-crop pixels.
        albedo: (B, N, 3) per-vertex albedo, sRGB-encoded values in [0, 1].
        colors: (B, N, 3) shaded colours (albedo x SH irradiance).
        attention: (B, T, h, w) cross-attention maps of the head's tokens (None when decoded from parameters).

    The mesh fields (shape, vertices, normals, albedo, colors) are None when decoded with ``landmarks_only``.
    """

    params: FaceParameters
    euler: torch.Tensor
    shape: torch.Tensor | None
    vertices: torch.Tensor | None
    normals: torch.Tensor | None
    landmarks_3d: torch.Tensor
    landmarks_2d: torch.Tensor
    albedo: torch.Tensor | None
    colors: torch.Tensor | None
    attention: torch.Tensor | None = None


class FaceRecon(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="facerecon",
    repo_url="https://github.com/facerecon/facerecon",
    pipeline_tag="image-to-3d",
    license="apache-2.0",
    tags=["3d-face-reconstruction", "3dmm", "face-alignment", "ict-facekit"],
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """Single-image 3D face reconstruction model.

    Args:
        config: a :class:`FaceReconConfig` or its dict (as read from ``config.json``); defaults when None.
        ict_path: ICT-FaceKit folder for the morphable model (else ``FACERECON_ICT``, the default search or the
            cache, see :mod:`facerecon.morphable.ict`).
    """

    def __init__(self, config: FaceReconConfig | dict | None = None, ict_path: str | None = None) -> None:
        super().__init__()
        if config is None:
            config = FaceReconConfig()
        elif isinstance(config, dict):
            config = FaceReconConfig.from_dict(config)
        elif not isinstance(config, FaceReconConfig):
            raise TypeError(f"config must be a FaceReconConfig or dict, got {type(config).__name__}")
        self.config = config
        self.token_names = config.tokens

        data = load_morphable_data(ict_path, surface=config.surface)
        landmark_index = load_landmark_index(config.landmarks, config.surface, data.faces, data.mean.shape[0])
        self.morphable = MorphableModel(data, n_identity=config.n_identity, landmark_index=landmark_index)
        if config.n_expression != self.morphable.n_expression:
            raise ValueError(f"config.n_expression={config.n_expression} but the morphable model has "
                             f"{self.morphable.n_expression} blendshapes")
        self.albedo_model = _make_albedo_model(config, self.morphable.n_vertices, self.morphable.faces)

        self.backbone = Backbone(config.backbone, config.feature_strides, config.head_dim, config.pretrained_backbone)
        self.head = ComponentAttentionHead(len(self.token_names), config.head_dim, config.head_heads,
                                           config.head_layers, config.head_dropout)
        d = config.head_dim
        # Each component token regresses its own blendshapes.
        groups = _expression_groups(self.morphable.expression_names)
        self.expression_heads = nn.ModuleDict({name: nn.Linear(d, len(groups[name])) for name in COMPONENT_TOKENS})
        order = torch.cat([torch.tensor(groups[name], dtype=torch.long) for name in COMPONENT_TOKENS])
        self.register_buffer("expression_order", torch.argsort(order), persistent=False)
        # Identity sees its own token and every component token (shape depends on all regions).
        self.identity_head = nn.Linear(d * (len(COMPONENT_TOKENS) + 1), config.n_identity)
        self.albedo_head = nn.Linear(d, config.n_albedo)
        self.lighting_head = nn.Linear(d, 27)
        self.pose_head = nn.Linear(d, 9)  # 6D rotation, tx, ty, log-scale
        for lin in (*self.expression_heads.values(), self.identity_head, self.albedo_head, self.lighting_head,
                    self.pose_head):
            nn.init.normal_(lin.weight, std=1e-3)
            nn.init.zeros_(lin.bias)
        for lin in self.expression_heads.values():
            nn.init.constant_(lin.bias, config.expression_bias)

        # Camera prior: the mean face's landmarks fill 1 / crop_scale of the crop, centred.
        lmk = self.morphable.mean[self.morphable.landmark_index]
        extent = (lmk[:, :2].amax(0) - lmk[:, :2].amin(0)).amax()
        self.register_buffer("scale_prior", config.input_size / (config.crop_scale * extent), persistent=False)
        self.register_buffer("rotation_prior", torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), persistent=False)
        ambient = torch.zeros(9, 3)
        ambient[0] = 1.0
        self.register_buffer("lighting_prior", ambient, persistent=False)
        # config.json holds exactly the FaceReconConfig fields (not run-time arguments such as ict_path), however
        # the model was built (directly, or by from_pretrained, which passes the config as a dict).
        self._hub_mixin_config = config.to_dict()

    # ------------------------------------------------------------------ forward
    def regress(self, tokens: torch.Tensor) -> FaceParameters:
        """Map head tokens (B, T, D) to :class:`FaceParameters`."""
        idx = {name: i for i, name in enumerate(self.token_names)}
        b = tokens.shape[0]
        exp_logits = torch.cat([self.expression_heads[n](tokens[:, idx[n]]) for n in COMPONENT_TOKENS], dim=1)
        expression = torch.sigmoid(exp_logits.index_select(1, self.expression_order))
        components = tokens[:, [idx[n] for n in (*COMPONENT_TOKENS, "identity")]].reshape(b, -1)
        identity = self.identity_head(components)
        albedo = self.albedo_head(tokens[:, idx["albedo"]])
        lighting = self.lighting_prior + self.lighting_head(tokens[:, idx["lighting"]]).reshape(b, 9, 3)
        pose = self.pose_head(tokens[:, idx["pose"]])
        rotation = rotation_6d_to_matrix(pose[:, :6] + self.rotation_prior)
        # Translation: one output unit moves the face by 10% of the crop.
        unit_mm = 0.1 * self.config.input_size / self.scale_prior
        translation = torch.cat([pose[:, 6:8] * unit_mm, torch.zeros_like(pose[:, :1])], dim=1)
        scale = self.scale_prior * torch.exp(pose[:, 8])
        return FaceParameters(identity=identity, expression=expression, albedo=albedo, lighting=lighting,
                              rotation=rotation, translation=translation, scale=scale)

    def decode(self, params: FaceParameters, attention: torch.Tensor | None = None,
               landmarks_only: bool = False) -> FaceReconOutput:
        """Geometry, landmarks and colours from parameters (also used to render synthetic faces).

        Args:
            params: face parameters for B faces.
            attention: optional (B, T, h, w) attention maps to carry along.
            landmarks_only: compute only pose and landmarks; the mesh fields (``shape``, ``vertices``,
                ``normals``, ``albedo``, ``colors``) are None. Much cheaper for landmark-only training.

        Returns:
            The :class:`FaceReconOutput` in input-crop pixels of size ``config.input_size``.
        """
        if landmarks_only:
            lmk_shape = self.morphable.shape(params.identity, params.expression, landmarks_only=True)
            landmarks_3d = model_to_camera(lmk_shape, params.rotation, params.translation)
            return FaceReconOutput(params=params, euler=matrix_to_euler(params.rotation), shape=None, vertices=None,
                                   normals=None, landmarks_3d=landmarks_3d,
                                   landmarks_2d=self.project(landmarks_3d, params.scale), albedo=None, colors=None,
                                   attention=attention)
        shape = self.morphable.shape(params.identity, params.expression)
        vertices = model_to_camera(shape, params.rotation, params.translation)
        landmarks_3d = self.morphable.landmarks(vertices)
        landmarks_2d = self.project(landmarks_3d, params.scale)
        normals = self.morphable.vertex_normals(shape) @ params.rotation.transpose(1, 2)
        albedo = self.albedo_model(params.albedo)
        colors = albedo * sh_shading(normals, params.lighting)
        return FaceReconOutput(params=params, euler=matrix_to_euler(params.rotation), shape=shape, vertices=vertices,
                               normals=normals, landmarks_3d=landmarks_3d, landmarks_2d=landmarks_2d, albedo=albedo,
                               colors=colors, attention=attention)

    def forward(self, images: torch.Tensor, landmarks_only: bool = False, backbone: nn.Module | None = None,
                flip_test: bool = False, views: torch.Tensor | None = None,
                orientation_test: bool = False, turns: torch.Tensor | None = None) -> FaceReconOutput:
        """Reconstruct faces from crops.

        Args:
            images: (B, 3, S, S) RGB face crops in [0, 1], S = ``config.input_size``; with ``views``
                (B, V, 3, S, S), crop ``v`` of a face cut from the box :func:`facerecon.geometry.view_boxes` gives
                for view ``v``.
            landmarks_only: skip the dense mesh (see :meth:`decode`).
            backbone: run this feature extractor instead of ``self.backbone`` (the inference pipeline passes a
                BatchNorm-folded copy, see :mod:`facerecon.models.fuse`).
            flip_test: also regress the horizontally flipped crops and average each face's parameters with the
                mirror image of its flipped prediction (:meth:`merge_flipped`): about twice the regressor's cost,
                more accurate landmarks and pose. ``attention`` is then that of the unflipped crops.
            views: optional (V, 3) test-time views ``(m, dx, dy)`` of each face (e.g. :data:`SHIFT_TEST_VIEWS`):
                every view is regressed and the predictions, mapped to the frame of the crop ``(1, 0, 0)``, are
                averaged (:meth:`merge_views`): about V times the regressor's cost. The outputs are in that crop's
                frame; ``attention`` is that of view 0.
            orientation_test: faces lying on their side or upside down in the crop are found by the flip
                disagreement of their landmarks (:meth:`crop_orientation`) and regressed turned upright; the outputs
                are mapped back to the crop's frame. It costs extra passes only for the few crops it checks.
            turns: optional (B,) known quarter turns that bring each face upright (as ``torch.rot90(crop, k)``;
                e.g. from a detector run on a turned photo): those faces are regressed turned, without the test.

        Returns:
            :class:`FaceReconOutput`.
        """
        size = self.config.input_size
        lead = 5 if views is not None else 4
        if images.ndim != lead or images.shape[-3] != 3 or images.shape[-2:] != (size, size):
            shape = "(B, V, 3, {0}, {0})" if views is not None else "(B, 3, {0}, {0})"
            raise ValueError(f"expected images of shape {shape.format(size)}, got {tuple(images.shape)}")

        params, attention = self.regress_crops(images, self.regressor(backbone), flip_test, views, orientation_test,
                                               turns)
        return self.decode(params, attention=attention, landmarks_only=landmarks_only)

    def regressor(self, backbone: nn.Module | None = None
                  ) -> Callable[[torch.Tensor], tuple[FaceParameters, torch.Tensor]]:
        """The network as a callable: (N, 3, S, S) crops -> (N) parameters and (N, T, h, w) attention.

        Args:
            backbone: run this feature extractor instead of ``self.backbone`` (see :meth:`forward`).
        """
        def run(x: torch.Tensor) -> tuple[FaceParameters, torch.Tensor]:
            tokens, attention = self.head((backbone or self.backbone)(x))
            return self.regress(tokens), attention

        return run

    def regress_crops(self, images: torch.Tensor,
                      regressor: Callable[[torch.Tensor], tuple[FaceParameters, torch.Tensor]],
                      flip_test: bool = False,
                      views: torch.Tensor | None = None,
                      orientation_test: bool = False,
                      turns: torch.Tensor | None = None) -> tuple[FaceParameters, torch.Tensor]:
        """Run ``regressor`` (crops -> parameters, attention) on crops, with the optional flip, view, turn tests.

        Args:
            images: (B, 3, S, S) crops, or (B, V, 3, S, S) crops of the ``views``.
            regressor: the network, (N, 3, S, S) -> (N) parameters and (N, T, h, w) attention.
            flip_test: the regressor also sees the mirror images (in the same batch) and each crop's prediction is
                merged with its mirror's (:meth:`merge_flipped`).
            views: optional (V, 3) views ``(m, dx, dy)`` of ``images`` (:meth:`merge_views` averages them).
            orientation_test: regress the faces that :meth:`crop_orientation` finds turned by quarter turns upright
                (all their views turned alike) and map the result back (:meth:`rotate_parameters`).
            turns: (B,) known quarter turns instead of the orientation test's (see :meth:`forward`).

        Returns:
            (B) parameters and the attention of the unflipped crops (of view 0). The torch forward and the ONNX
            back-end share this.
        """
        params, attention, raw = self._regress_views(images, regressor, flip_test, views)
        if turns is not None:
            if turns.shape != (images.shape[0],):
                raise ValueError(f"turns must be ({images.shape[0]},) quarter turns, got shape {tuple(turns.shape)}")
            turns = turns.to(images.device).long().remainder(4)
        elif orientation_test:
            b = images.shape[0]
            base = images[:, 0] if views is not None else images
            first = torch.arange(b, device=images.device) * (views.shape[0] if views is not None else 1)
            if flip_test:
                upright, mirrored = raw[first], raw[first + raw.scale.shape[0] // 2]
            else:
                upright, mirrored = raw[first], regressor(base.flip(-1))[0]
            turns = self.crop_orientation(base, regressor, upright, mirrored)
        else:
            return params, attention
        for k in (1, 2, 3):
            sel = (turns == k).nonzero().flatten()
            if len(sel) == 0:
                continue
            turned = torch.rot90(images[sel], k, dims=(-2, -1))
            p, a, _ = self._regress_views(turned, regressor, flip_test, None if views is None else turn_views(views, k))
            p = self.rotate_parameters(p, torch.full_like(sel, -k))
            params = FaceParameters(**{f.name: getattr(params, f.name).index_copy(0, sel, getattr(p, f.name))
                                       for f in fields(params)})
            attention = attention.index_copy(0, sel, torch.rot90(a, -k, dims=(-2, -1)))
        return params, attention

    def _regress_views(self, images: torch.Tensor,
                       regressor: Callable[[torch.Tensor], tuple[FaceParameters, torch.Tensor]],
                       flip_test: bool, views: torch.Tensor | None
                       ) -> tuple[FaceParameters, torch.Tensor, FaceParameters]:
        """:meth:`regress_crops` without the orientation test; also returns the regressor's raw (N) parameters."""
        b = images.shape[0]
        flat = images.flatten(0, 1) if views is not None else images
        n = flat.shape[0]
        raw, attention = regressor(torch.cat([flat, flat.flip(-1)]) if flip_test else flat)
        params = raw
        if flip_test:
            params, attention = self.merge_flipped(raw), attention[:n]
        if views is not None:
            params = self.merge_views(params, views)
            attention = attention.unflatten(0, (b, -1))[:, 0]
        return params, attention, raw

    def flip_disagreement(self, params: FaceParameters, mirrored: FaceParameters) -> torch.Tensor:
        """How far each crop's 68 landmarks lie from its mirror image's, mirrored back.

        Args:
            params: (B) parameters regressed from crops.
            mirrored: (B) parameters regressed from the same crops flipped horizontally.

        Returns:
            (B,) mean point distance over the crop side.

        Convention: 0-based pixel centres; the flip maps x to S - 1 - x and permutes the points by ``MIRROR_68``.
        """
        size = self.config.input_size
        a = self.decode(params, landmarks_only=True).landmarks_2d
        b = self.decode(mirrored, landmarks_only=True).landmarks_2d[:, list(MIRROR_68)]
        b = torch.stack([(size - 1) - b[..., 0], b[..., 1]], dim=-1)
        return (a - b).norm(dim=-1).mean(-1) / size

    def crop_orientation(self, crops: torch.Tensor,
                         regressor: Callable[[torch.Tensor], tuple[FaceParameters, torch.Tensor]],
                         upright: FaceParameters, mirrored: FaceParameters) -> torch.Tensor:
        """Quarter turns that bring each crop's face upright (0 for most crops).

        A face the regressor reads well gives nearly the same landmarks as its mirror image; one lying on its side
        does not. Crops whose :meth:`flip_disagreement` exceeds :data:`ORIENTATION_GATE` are also regressed (with
        their flips) turned by the quarter turns in :data:`ORIENTATION_TURNS` (1 and 3), and the turn with the least
        disagreement is chosen when that is below the gate and below :data:`ORIENTATION_RATIO` times the crop's own
        (:func:`orientation_turns`). Half turns are left to the pipeline's detector (it also looks in turned photos).

        Args:
            crops: (B, 3, S, S) crops.
            regressor: the network, as in :meth:`regress_crops`.
            upright: (B) parameters the regressor gave for ``crops``.
            mirrored: (B) parameters it gave for ``crops.flip(-1)``.

        Returns:
            (B,) int64 quarter turns ``k``: regress ``torch.rot90(crop, k, dims=(-2, -1))`` (counter-clockwise as
            displayed).
        """
        d0 = self.flip_disagreement(upright, mirrored)
        turns = torch.zeros(crops.shape[0], dtype=torch.long, device=crops.device)
        gated = (d0 > ORIENTATION_GATE).nonzero().flatten()
        if len(gated) == 0:
            return turns
        turned = torch.cat([torch.rot90(crops[gated], k, dims=(-2, -1)) for k in ORIENTATION_TURNS])
        p, _ = regressor(torch.cat([turned, turned.flip(-1)]))
        m = turned.shape[0]
        d = torch.full((len(gated), 4), float("inf"), dtype=d0.dtype, device=d0.device)
        d[:, 0] = d0[gated]
        d[:, list(ORIENTATION_TURNS)] = self.flip_disagreement(p[:m], p[m:]).view(len(ORIENTATION_TURNS), -1).T
        return turns.index_copy(0, gated, orientation_turns(d))

    def rotate_parameters(self, params: FaceParameters, turns: torch.Tensor) -> FaceParameters:
        """Parameters of the faces turned with their crops by quarter turns about the crop centre.

        What the regressor should predict for ``torch.rot90(crop, k, dims=(-2, -1))`` (counter-clockwise as
        displayed): the head rotation gains ``Q^k`` in the view frame, ``Q = (x, y, z) -> (-y, x, z)``; the
        translation's (x, y) in the camera frame (y down) turns alike, ``(x, y) -> (y, -x)`` per turn; the lighting
        turns with the scene (:func:`facerecon.geometry.sh_quarter_turn`); shape, albedo and scale are unchanged.
        ``turns`` and ``-turns`` are inverse maps.

        Args:
            params: (B) parameters.
            turns: (B,) integer quarter turns (taken modulo 4).

        Convention: the principal point is the crop centre ((S - 1) / 2, 0-based pixel centres).
        """
        k = turns.to(params.scale.device).long().remainder(4)
        dtype = params.rotation.dtype
        cos = params.rotation.new_tensor([1.0, 0.0, -1.0, 0.0])[k]
        sin = params.rotation.new_tensor([0.0, 1.0, 0.0, -1.0])[k]
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        q = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1),
                         torch.stack([zero, zero, one], -1)], -2)
        tx, ty, tz = params.translation.unbind(-1)
        translation = torch.stack([cos * tx + sin * ty, cos * ty - sin * tx, tz], dim=-1)
        lighting = sh_quarter_turn(k, dtype=params.lighting.dtype) @ params.lighting
        return dataclasses.replace(params, rotation=q.to(dtype) @ params.rotation, translation=translation,
                                   lighting=lighting)

    def merge_views(self, params: FaceParameters, views: torch.Tensor) -> FaceParameters:
        """Average the predictions of several views of each face in the frame of its crop ``(1, 0, 0)``.

        A view's crop is the face's crop scaled by ``m`` about its centre and shifted by ``(dx, dy)`` of its side
        (:func:`facerecon.geometry.view_boxes`), so its pixel ``u`` lies at ``c + m (u - c) + (dx, dy) S`` of the
        face's crop (``c`` the principal point): the scale becomes ``m * scale`` and the translation gains
        ``(dx, dy) S / (m * scale)`` mm; the mapped predictions are averaged with :func:`average_parameters`.

        Args:
            params: (B * V) parameters, face-major (the V views of face 0 first).
            views: (V, 3) views ``(m, dx, dy)``.

        Returns:
            (B) parameters.

        Convention: 0-based pixel centres; x right, y down; the views as in :func:`facerecon.geometry.view_boxes`.
        """
        if views.ndim != 2 or views.shape[-1] != 3 or views.shape[0] < 1:
            raise ValueError(f"views must be (V, 3) rows (m, dx, dy), got shape {tuple(views.shape)}")
        n_views, n = views.shape[0], params.scale.shape[0]
        if n % n_views:
            raise ValueError(f"merge_views got {n} predictions for {n_views} views per face (not a multiple)")
        v = views.to(device=params.scale.device, dtype=params.scale.dtype)
        m = v[:, 0].repeat(n // n_views)
        shift = v[:, 1:].repeat(n // n_views, 1) * float(self.config.input_size)
        scale = params.scale * m
        translation = params.translation + torch.nn.functional.pad(shift / scale[:, None], (0, 1))
        mapped = dataclasses.replace(params, scale=scale, translation=translation)
        return average_parameters(*[mapped[k::n_views] for k in range(n_views)])

    def mirror_parameters(self, params: FaceParameters) -> FaceParameters:
        """Parameters of the mirror-image faces: what the regressor should predict for horizontally flipped crops.

        Identity and albedo coefficients are the least-squares fits of the mirrored shape and albedo, blendshapes
        swap left and right (:meth:`facerecon.morphable.model.MorphableModel.mirror_coefficients`), the rotation is
        ``M R M`` (yaw and roll change sign), x-odd SH lighting terms change sign, and the translation's x (relative
        to the crop centre, the principal point) changes sign. Mirroring twice returns the input up to the models'
        mirror closure.

        Convention: the flipped crop is ``images.flip(-1)``, i.e. x -> S - 1 - x in 0-based pixel centres.
        """
        identity, expression = self.morphable.mirror_coefficients(params.identity, params.expression)
        lighting = params.lighting * params.lighting.new_tensor(SH_MIRROR_X_SIGNS)[:, None]
        return FaceParameters(
            identity=identity, expression=expression,
            albedo=self.albedo_model.mirror_coefficients(params.albedo, self.morphable.vertex_mirror),
            lighting=lighting, rotation=mirror_rotation(params.rotation),
            translation=params.translation * params.translation.new_tensor([-1.0, 1.0, 1.0]), scale=params.scale)

    def merge_flipped(self, params: FaceParameters) -> FaceParameters:
        """Average the predictions of crops and their flips.

        Args:
            params: (2B) parameters regressed from ``torch.cat([crops, crops.flip(-1)])``.

        Returns:
            (B) :func:`average_parameters` of the first half and the mirror image of the second.
        """
        n = params.scale.shape[0]
        if n % 2:
            raise ValueError(f"merge_flipped expects crops followed by their flips (an even batch), got {n}")
        return average_parameters(params[: n // 2], self.mirror_parameters(params[n // 2:]))

    # ------------------------------------------------------------------ inference helpers
    def principal_point(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """(B, 2) principal point of the input crop (its centre, 0-based pixel centres), on ``like``'s device."""
        return torch.full((batch, 2), (self.config.input_size - 1) / 2.0, device=like.device, dtype=like.dtype)

    def project(self, points_cam: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Camera-frame points (B, P, 3) -> input-crop pixels (B, P, 2) with the model's principal point."""
        return weak_perspective_project(points_cam, scale, self.principal_point(points_cam.shape[0], points_cam))

    def screen(self, points_cam: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Camera-frame points (B, P, 3) -> renderer screen space of the input crop (B, P, 3).

        Screen space: x, y in crop pixels, z = scale * depth (see :func:`facerecon.render.to_screen`).
        """
        from facerecon.render import to_screen

        return to_screen(points_cam, scale, self.principal_point(points_cam.shape[0], points_cam))

    def reconstruct(self, image: Any, box: Any = None, backend: str = "torch", flip_test: bool = True,
                    shift_test: bool = True, orientation_test: bool = True, **kwargs: Any) -> list[Reconstruction]:
        """Reconstruct every face in a photo (see :class:`facerecon.inference.pipeline.Reconstructor`).

        Args:
            image: path, bytes, PIL image or RGB numpy array.
            box: optional face box [x0, y0, x1, y1] in image pixels; detection runs when None.
            backend: "torch" (default) or "onnx" (onnxruntime runs the regressor, exported once into the cache).
            flip_test: average with the mirrored crop's prediction (see :meth:`forward`; the evaluated default,
                False halves the regressor time).
            shift_test: also average the crops shifted by 7 % of their side in four directions
                (:data:`SHIFT_TEST_VIEWS`; the evaluated default, False divides the regressor time by five).
            orientation_test: regress faces lying on their side or upside down turned upright
                (:meth:`crop_orientation`; the evaluated default, extra passes only for the crops it checks).
            **kwargs: forwarded to :meth:`Reconstructor.__call__` (e.g. ``max_faces``).

        Returns:
            One :class:`Reconstruction` per face, largest first.
        """
        from facerecon.inference.pipeline import Reconstructor

        cache = self.__dict__.setdefault("_reconstructors", {})
        key = (backend, bool(flip_test), bool(shift_test), bool(orientation_test))
        if key not in cache:
            cache[key] = Reconstructor(self, backend=backend, flip_test=flip_test, shift_test=shift_test,
                                       orientation_test=orientation_test)
        return cache[key](image, box=box, **kwargs)

    def export_onnx(self, path: str | Path, check: bool = True, atol: float = 1e-4) -> Path:
        """Export the regressor (crops -> parameters, landmarks, attention) to ONNX with a dynamic batch axis.

        See :func:`facerecon.inference.onnx_backend.export_onnx`; with ``check`` the file is run with onnxruntime
        (when installed) and compared with torch to ``atol`` (relative for outputs larger than 1).
        """
        from facerecon.inference.onnx_backend import export_onnx

        return export_onnx(self, path, check=check, atol=atol)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_reconstructors", None)  # pipelines hold locks and detectors: rebuilt on demand
        return state

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> FaceRecon:
        """Load a model saved with :meth:`save_pretrained`, from a local folder or a Hugging Face Hub repo id.

        Args:
            pretrained_model_name_or_path: a folder with ``config.json`` + ``model.safetensors``, or a repo id.
            **kwargs: ``strict``, ``map_location``, ``revision``, ``token``, ``cache_dir``, ``local_files_only``,
                ``force_download``, and model arguments such as ``ict_path``.

        Raises:
            FileNotFoundError: a local folder lacks ``config.json`` or ``model.safetensors``.
            ModelDownloadError: the repo could not be fetched (offline, unknown repo, no access).
        """
        name = str(pretrained_model_name_or_path)
        if os.path.isdir(name):
            missing = [f for f in ("config.json", "model.safetensors") if not os.path.isfile(os.path.join(name, f))]
            if missing:
                raise FileNotFoundError(f"'{name}' is not a saved FaceRecon model: missing {', '.join(missing)}")
        elif os.path.exists(name) or name.endswith((".safetensors", ".json", ".pt", ".pth")) or name.count("/") > 1:
            raise FileNotFoundError(f"'{name}' is neither a model folder nor a Hugging Face Hub repo id "
                                    "('org/name')")
        else:
            from huggingface_hub import hf_hub_download

            hub_args = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only",
                                               "force_download") if k in kwargs}
            try:
                for filename in ("config.json", "model.safetensors"):
                    hf_hub_download(repo_id=name, filename=filename, **hub_args)
            except Exception as err:
                raise ModelDownloadError(
                    f"could not fetch the FaceRecon model '{name}' from the Hugging Face Hub "
                    f"({type(err).__name__}: {err}). Offline? Pass a local folder saved with save_pretrained(), "
                    "e.g. the bundled default model (facerecon.DEFAULT_MODEL_DIR), or set HF_HUB_OFFLINE=1 to use "
                    "a copy already in the Hub cache."
                ) from err
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, config: FaceReconConfig | dict | None = None, **kwargs: Any) -> FaceRecon:
        # Saved weights replace any backbone initialisation: never download ImageNet weights when loading.
        if isinstance(config, dict):
            config = {**config, "pretrained_backbone": False}
        elif isinstance(config, FaceReconConfig):
            config = dataclasses.replace(config, pretrained_backbone=False)
        return super()._from_pretrained(config=config, **kwargs)

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def orientation_turns(disagreement: torch.Tensor, gate: float = ORIENTATION_GATE,
                      ratio: float = ORIENTATION_RATIO, bounded: bool = True,
                      turns: tuple[int, ...] = ORIENTATION_TURNS) -> torch.Tensor:
    """The orientation test's rule (:meth:`FaceRecon.crop_orientation`): which quarter turn brings each face upright.

    Args:
        disagreement: (B, 4) :meth:`FaceRecon.flip_disagreement` of each crop turned by 0, 1, 2 and 3 quarter turns
            (columns of turns not in ``turns`` are ignored and may hold anything, e.g. ``inf``).
        gate: a crop is turned only when its own disagreement exceeds this and the least disagreement of its turns
            is below it (the turned crop reads like an upright face) ...
        ratio: ... and below this times the crop's own.
        bounded: False drops the bound of the turned crop's disagreement by the gate (the first rule, kept
            for ``benchmarks/orientation_rule.py``).
        turns: the quarter turns (of 1, 2, 3) the rule may choose.

    Returns:
        (B,) int64 quarter turns (0: keep the crop as it is).
    """
    if not turns or any(k not in (1, 2, 3) for k in turns):
        raise ValueError(f"turns must be a non-empty subset of (1, 2, 3), got {turns}")
    allowed = torch.tensor([k in turns for k in (1, 2, 3)], device=disagreement.device)
    best, k = disagreement[:, 1:].masked_fill(~allowed, float("inf")).min(-1)
    turn = (disagreement[:, 0] > gate) & (best < ratio * disagreement[:, 0])
    if bounded:
        turn = turn & (best < gate)
    return torch.where(turn, k + 1, torch.zeros_like(k))


def turn_views(views: torch.Tensor, turns: int) -> torch.Tensor:
    """The views ``(m, dx, dy)`` of a crop turned by ``turns`` quarter turns (as ``torch.rot90(crop, turns)``).

    Each view's offset from the crop centre turns with the scene: ``(dx, dy) -> (dy, -dx)`` per turn.

    Convention: x right, y down; offsets in crop sides (:func:`facerecon.geometry.view_boxes`).
    """
    m, dx, dy = views.unbind(-1)
    for _ in range(int(turns) % 4):
        dx, dy = dy, -dx
    return torch.stack([m, dx, dy], dim=-1)


def _make_albedo_model(config: FaceReconConfig, n_vertices: int, faces: torch.Tensor) -> AlbedoModel:
    """The placeholder ("uniform") or the learned albedo model (bundled "default" or a path)."""
    if config.albedo_model == "uniform":
        return AlbedoModel.uniform(n_vertices, config.n_albedo)
    return load_albedo_model(config.albedo_model, n_components=config.n_albedo, n_vertices=n_vertices, faces=faces)


def _expression_groups(names: tuple[str, ...]) -> dict[str, list[int]]:
    """Assign each blendshape to the component token whose prefix it starts with."""
    groups: dict[str, list[int]] = {name: [] for name in COMPONENT_TOKENS}
    for i, n in enumerate(names):
        owners = [c for c in COMPONENT_TOKENS if n.startswith(COMPONENT_PREFIXES[c])]
        if len(owners) != 1:
            raise ValueError(f"blendshape '{n}' matches component tokens {owners}; expected exactly one")
        groups[owners[0]].append(i)
    return groups
