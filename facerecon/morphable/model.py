"""The morphable model as a torch module: identity + expression shape, and the albedo slot."""

from __future__ import annotations

import torch
from torch import nn

from facerecon.geometry.mesh import vertex_face_incidence, vertex_normals
from facerecon.morphable.ict import MorphableModelData

#: Mean skin albedo (sRGB-encoded values in [0, 1]) of the placeholder albedo model.
DEFAULT_SKIN_ALBEDO = (0.62, 0.46, 0.38)
#: Std of the placeholder model's per-channel tint modes.
DEFAULT_TINT_STD = 0.12


class MorphableModel(nn.Module):
    """Linear face model: ``V = mean + sum_k a_k sigma_k U_k + sum_j e_j B_j``.

    All bases are non-persistent buffers: they are rebuilt from ICT-FaceKit (or the cache) and are never part
    of a saved ``state_dict``.

    Convention: model frame, millimetres, +x subject's left, +y up, +z towards the viewer.

    Args:
        data: the built arrays (see :func:`facerecon.morphable.ict.load_morphable_data`).
        n_identity: number of identity modes kept (<= 100), ordered by explained variance.
        landmark_index: optional (68,) vertex indices replacing ICT-FaceKit's landmark vertices (see
            :mod:`facerecon.morphable.landmarks`).
    """

    def __init__(self, data: MorphableModelData, n_identity: int, landmark_index: torch.Tensor | None = None) -> None:
        super().__init__()
        k_max = data.identity_basis.shape[0]
        if not 1 <= n_identity <= k_max:
            raise ValueError(f"n_identity must be in [1, {k_max}], got {n_identity}")
        self.n_identity = n_identity
        self.expression_names = data.expression_names
        self.surface = data.surface
        self.register_buffer("mean", data.mean.clone(), persistent=False)
        self.register_buffer("identity_basis", data.identity_basis[:n_identity].clone(), persistent=False)
        self.register_buffer("identity_std", data.identity_std[:n_identity].clone(), persistent=False)
        self.register_buffer("explained_variance", data.explained_variance.clone(), persistent=False)
        self.register_buffer("expression_basis", data.expression_basis.clone(), persistent=False)
        self.register_buffer("faces", data.faces.clone(), persistent=False)
        self.register_buffer("uvs", data.uvs.clone(), persistent=False)
        self.register_buffer("face_uvs", data.face_uvs.clone(), persistent=False)
        lmk = data.landmark_index if landmark_index is None else landmark_index.to(data.landmark_index)
        if lmk.shape != (68,) or int(lmk.min()) < 0 or int(lmk.max()) >= data.mean.shape[0]:
            raise ValueError(f"landmark_index must be 68 vertex indices in [0, {data.mean.shape[0]})")
        self.register_buffer("landmark_index", lmk.clone(), persistent=False)
        self.register_buffer("landmark_mirror", data.landmark_mirror.clone(), persistent=False)
        self.register_buffer("vertex_mirror", data.vertex_mirror.clone(), persistent=False)
        self.register_buffer("landmark_mean", self.mean[lmk].clone(), persistent=False)
        self.register_buffer("landmark_identity_basis", self.identity_basis[:, lmk].clone(), persistent=False)
        self.register_buffer("landmark_expression_basis", self.expression_basis[:, lmk].clone(), persistent=False)

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_incidence", None)  # a rebuildable cache (sparse tensors cannot be deep-copied or pickled)
        return state

    def vertex_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) vertices on this mesh -> (B, N, 3) area-weighted unit normals (sparse incidence, cached).

        Convention: as :func:`facerecon.geometry.vertex_normals` (outward for the counter-clockwise triangles).
        """
        key = (vertices.device, vertices.dtype)
        cache = self.__dict__.setdefault("_incidence", {})
        if key not in cache:
            cache[key] = vertex_face_incidence(self.faces.to(vertices.device), self.n_vertices, vertices.dtype)
        return vertex_normals(vertices, self.faces, incidence=cache[key])

    @property
    def n_vertices(self) -> int:
        """Number of surface vertices N."""
        return self.mean.shape[0]

    @property
    def n_expression(self) -> int:
        """Number of expression blendshapes E."""
        return self.expression_basis.shape[0]

    def shape(self, identity: torch.Tensor, expression: torch.Tensor, landmarks_only: bool = False) -> torch.Tensor:
        """Vertices of a face in the model frame.

        Args:
            identity: (B, K) identity coefficients, ~N(0, 1).
            expression: (B, E) blendshape weights in [0, 1].
            landmarks_only: evaluate only the 68 landmark vertices (cheap; for landmark-only training).

        Returns:
            (B, N, 3) vertices in mm, or (B, 68, 3) with ``landmarks_only``. Convention: model frame (+y up, +z
            towards the viewer).
        """
        if identity.shape[-1] != self.n_identity or expression.shape[-1] != self.n_expression:
            raise ValueError(f"expected identity (B, {self.n_identity}) and expression (B, {self.n_expression}), "
                             f"got {tuple(identity.shape)} and {tuple(expression.shape)}")
        if landmarks_only:
            mean, ident, expr = self.landmark_mean, self.landmark_identity_basis, self.landmark_expression_basis
        else:
            mean, ident, expr = self.mean, self.identity_basis, self.expression_basis
        offset = torch.einsum("bk,knc->bnc", identity * self.identity_std, ident)
        offset = offset + torch.einsum("be,enc->bnc", expression, expr)
        return mean + offset

    def landmarks(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B, 68, 3) landmark vertices."""
        return vertices.index_select(-2, self.landmark_index)


class AlbedoModel(nn.Module):
    """Linear per-vertex albedo model: ``A = clamp(mean + sum_k c_k sigma_k U_k, 0, 1)``.

    The placeholder model (:meth:`uniform`) has one mean skin colour and three per-channel tint modes; the
    learned PCA model replaces it without changing this interface.

    Args:
        mean: (N, 3) mean albedo, sRGB-encoded values in [0, 1].
        basis: (K, N, 3) modes.
        std: (K,) standard deviation of each mode (coefficients are ~N(0, 1)).
    """

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        if basis.ndim != 3 or basis.shape[1:] != mean.shape or std.shape != basis.shape[:1]:
            raise ValueError(f"inconsistent albedo model shapes: mean {tuple(mean.shape)}, "
                             f"basis {tuple(basis.shape)}, std {tuple(std.shape)}")
        self.register_buffer("mean", mean.clone(), persistent=False)
        self.register_buffer("basis", basis.clone(), persistent=False)
        self.register_buffer("std", std.clone(), persistent=False)

    @classmethod
    def uniform(cls, n_vertices: int, n_components: int = 3) -> AlbedoModel:
        """The placeholder model: one skin colour, plus per-channel tint modes (first ``n_components`` of R, G, B).

        Args:
            n_vertices: N.
            n_components: 1 to 3.
        """
        if not 1 <= n_components <= 3:
            raise ValueError(f"the placeholder albedo model has 1 to 3 components, got {n_components}")
        mean = torch.tensor(DEFAULT_SKIN_ALBEDO).expand(n_vertices, 3).clone()
        basis = torch.zeros(n_components, n_vertices, 3)
        for k in range(n_components):
            basis[k, :, k] = 1.0
        return cls(mean, basis, torch.full((n_components,), DEFAULT_TINT_STD))

    @property
    def n_components(self) -> int:
        """Number of albedo coefficients K."""
        return self.basis.shape[0]

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, K) coefficients -> (B, N, 3) albedo in [0, 1] (sRGB-encoded values, like the photo)."""
        if coeffs.shape[-1] != self.n_components:
            raise ValueError(f"expected albedo coefficients (B, {self.n_components}), got {tuple(coeffs.shape)}")
        albedo = self.mean + torch.einsum("bk,knc->bnc", coeffs * self.std, self.basis)
        return albedo.clamp(0.0, 1.0)
