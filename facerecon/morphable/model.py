"""The morphable model as a torch module: identity + expression shape, and the albedo slot."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from facerecon.geometry.mesh import vertex_face_incidence, vertex_normals
from facerecon.morphable.ict import MorphableModelData

#: Mean skin albedo (sRGB-encoded values in [0, 1]) of the placeholder albedo model.
DEFAULT_SKIN_ALBEDO = (0.62, 0.46, 0.38)
#: Std of the placeholder model's per-channel tint modes.
DEFAULT_TINT_STD = 0.12


def mirror_expression_index(names: tuple[str, ...] | list[str]) -> list[int]:
    """Index of each blendshape's mirror image: ``mirrored[:, i] = weights[:, index[i]]``.

    ARKit-style names: ``*_L`` <-> ``*_R`` and ``*Left*`` <-> ``*Right*`` (``jawLeft``, ``mouthLeft``); the others
    (``jawOpen``, ``mouthFunnel``, ...) are their own mirror image.

    Raises:
        ValueError: when the mirror name of a blendshape is not among ``names``.
    """
    def mirrored(n: str) -> str:
        if n.endswith("_L"):
            return n[:-2] + "_R"
        if n.endswith("_R"):
            return n[:-2] + "_L"
        if "Left" in n:
            return n.replace("Left", "Right")
        if "Right" in n:
            return n.replace("Right", "Left")
        return n

    pos = {n: i for i, n in enumerate(names)}
    missing = [n for n in names if mirrored(n) not in pos]
    if missing:
        raise ValueError(f"blendshapes without a mirror image among the names: {missing}")
    return [pos[mirrored(n)] for n in names]


def linear_mirror_map(mean: torch.Tensor, basis: torch.Tensor, std: torch.Tensor, vertex_mirror: torch.Tensor,
                      flip_x: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficient map of the mirror image for a linear model ``mean + sum_k c_k std_k basis_k``.

    The mirror of a per-vertex field ``v`` is ``v[vertex_mirror] * (-1, 1, 1)`` for positions (``flip_x``) and
    ``v[vertex_mirror]`` for colours. The coefficients of the mirrored field are its least-squares fit,
    ``c' = c @ T^T + o``: exact when the model is closed under mirroring (ICT-FaceKit's identity modes are to about
    1 %).

    Args:
        mean: (N, 3) mean field.
        basis: (K, N, 3) modes.
        std: (K,) mode scales.
        vertex_mirror: (N,) mirror-image vertex of each vertex.
        flip_x: negate the x component (positions) or not (colours).

    Returns:
        ``(T, o)``: (K, K) matrix and (K,) offset, in the dtype of ``mean``.
    """
    k = basis.shape[0]
    sign = torch.tensor([-1.0 if flip_x else 1.0, 1.0, 1.0], dtype=torch.float64, device=mean.device)
    modes = basis.double() * std.double()[:, None, None]
    a = modes.reshape(k, -1).T  # (3N, K)
    ma = (modes[:, vertex_mirror] * sign).reshape(k, -1).T
    m = mean.double()
    dm = ((m[vertex_mirror] * sign) - m).reshape(-1, 1)
    sol = torch.linalg.lstsq(a, torch.cat([ma, dm], dim=1)).solution  # (K, K + 1)
    return sol[:, :k].to(mean.dtype), sol[:, k].to(mean.dtype)


def _cached(module: nn.Module, name: str, key: Any, build: Callable[[], Any]) -> Any:
    """``build()`` once per ``key``, kept in ``module.__dict__[name]`` (a rebuildable cache, not a buffer).

    The value is built outside inference mode even when first asked for inside it, so that a model used for inference
    first can still be trained (inference tensors cannot be saved for backward).
    """
    cache = module.__dict__.setdefault(name, {})
    if key not in cache:
        with torch.inference_mode(False):
            cache[key] = build()
    return cache[key]


def _cached_map(module: nn.Module, name: str, build, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear map ``(t, o)`` from ``build()``, cached per (device, dtype) of ``like`` (see :func:`_cached`)."""
    return _cached(module, name, (like.device, like.dtype), lambda: tuple(x.to(like) for x in build()))


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
        self.register_buffer("expression_mirror", torch.tensor(mirror_expression_index(data.expression_names)),
                             persistent=False)
        self.register_buffer("vertex_mirror", data.vertex_mirror.clone(), persistent=False)
        self.register_buffer("landmark_mean", self.mean[lmk].clone(), persistent=False)
        self.register_buffer("landmark_identity_basis", self.identity_basis[:, lmk].clone(), persistent=False)
        self.register_buffer("landmark_expression_basis", self.expression_basis[:, lmk].clone(), persistent=False)

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_incidence", None)  # a rebuildable cache (sparse tensors cannot be deep-copied or pickled)
        state.pop("_identity_mirror", None)
        return state

    def vertex_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) vertices on this mesh -> (B, N, 3) area-weighted unit normals (sparse incidence, cached).

        Convention: as :func:`facerecon.geometry.vertex_normals` (outward for the counter-clockwise triangles).
        """
        incidence = _cached(self, "_incidence", (vertices.device, vertices.dtype), lambda: vertex_face_incidence(
            self.faces.to(vertices.device), self.n_vertices, vertices.dtype))
        return vertex_normals(vertices, self.faces, incidence=incidence)

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
        if landmarks_only:
            return self._combine(identity, expression, self.landmark_mean, self.landmark_identity_basis,
                                 self.landmark_expression_basis)
        return self._combine(identity, expression, self.mean, self.identity_basis, self.expression_basis)

    def shape_at(self, identity: torch.Tensor, expression: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Model-frame positions of the vertices ``index`` only (e.g. another landmark definition's), cheaply.

        Args:
            identity: (B, K) identity coefficients.
            expression: (B, E) blendshape weights.
            index: (M,) vertex indices.

        Returns:
            (B, M, 3) in mm, equal to ``shape(identity, expression)[:, index]``. Convention: model frame.
        """
        index = index.to(self.mean.device)
        return self._combine(identity, expression, self.mean.index_select(0, index),
                             self.identity_basis.index_select(1, index), self.expression_basis.index_select(1, index))

    def _combine(self, identity: torch.Tensor, expression: torch.Tensor, mean: torch.Tensor, ident: torch.Tensor,
                 expr: torch.Tensor) -> torch.Tensor:
        """``mean (M, 3) + identity_std * identity @ ident (K, M, 3) + expression @ expr (E, M, 3)``, checked."""
        if identity.shape[-1] != self.n_identity or expression.shape[-1] != self.n_expression:
            raise ValueError(f"expected identity (B, {self.n_identity}) and expression (B, {self.n_expression}), "
                             f"got {tuple(identity.shape)} and {tuple(expression.shape)}")
        offset = torch.einsum("bk,knc->bnc", identity * self.identity_std, ident)
        offset = offset + torch.einsum("be,enc->bnc", expression, expr)
        return mean + offset

    def landmarks(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B, 68, 3) landmark vertices."""
        return vertices.index_select(-2, self.landmark_index)

    def mirror_coefficients(self, identity: torch.Tensor,
                            expression: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coefficients of the mirror-image face (x -> -x in the model frame, left and right swapped).

        Args:
            identity: (B, K) identity coefficients.
            expression: (B, E) blendshape weights.

        Returns:
            ``(identity', expression')``: the least-squares identity fit of the mirrored shape (see
            :func:`linear_mirror_map`) and the blendshape weights with left and right swapped
            (:func:`mirror_expression_index`). ``shape(identity', expression')`` is, to the model's mirror
            closure, ``shape(identity, expression)[:, vertex_mirror] * (-1, 1, 1)``.

        Convention: model frame.
        """
        t, o = _cached_map(self, "_identity_mirror", lambda: linear_mirror_map(
            self.mean, self.identity_basis, self.identity_std, self.vertex_mirror, flip_x=True), identity)
        return identity @ t.T + o, expression.index_select(-1, self.expression_mirror)


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

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_albedo_mirror", None)
        return state

    def mirror_coefficients(self, coeffs: torch.Tensor, vertex_mirror: torch.Tensor) -> torch.Tensor:
        """(B, K) coefficients of the left-right mirrored albedo (least-squares fit, :func:`linear_mirror_map`).

        Args:
            coeffs: (B, K) albedo coefficients.
            vertex_mirror: (N,) mirror-image vertex of each vertex of the mesh.
        """
        t, o = _cached_map(self, "_albedo_mirror", lambda: linear_mirror_map(
            self.mean, self.basis, self.std, vertex_mirror, flip_x=False), coeffs)
        return coeffs @ t.T + o

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, K) coefficients -> (B, N, 3) albedo in [0, 1] (sRGB-encoded values, like the photo)."""
        if coeffs.shape[-1] != self.n_components:
            raise ValueError(f"expected albedo coefficients (B, {self.n_components}), got {tuple(coeffs.shape)}")
        albedo = self.mean + torch.einsum("bk,knc->bnc", coeffs * self.std, self.basis)
        return albedo.clamp(0.0, 1.0)
