"""Triangle-mesh helpers: face and vertex normals, vertex gathering.

All functions are pure and batched over leading dimensions ``...`` (usually ``B``) of the vertex tensor; the
topology (``faces``, ``index``) is shared across the batch.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["face_normals", "gather_vertices", "vertex_face_incidence", "vertex_normals"]

_EPS = 1e-12


def _safe_normalize(v: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Normalise (..., 3) vectors; vectors shorter than ``eps`` are divided by ``eps`` (no NaN, finite gradient)."""
    return v / torch.sqrt((v * v).sum(-1, keepdim=True).clamp_min(eps * eps))


def _face_cross(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unnormalised face normals ``(v1 - v0) x (v2 - v0)`` (..., F, 3); their length is twice the triangle area."""
    v0 = vertices.index_select(-2, faces[:, 0])
    v1 = vertices.index_select(-2, faces[:, 1])
    v2 = vertices.index_select(-2, faces[:, 2])
    return torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Compute unit normals of triangles.

    Args:
        vertices: (B, N, 3) vertex positions.
        faces: (F, 3) int64 vertex indices per triangle.

    Returns:
        (B, F, 3) unit normals ``normalize((v1 - v0) x (v2 - v0))``; degenerate triangles give ~0 vectors, not NaN.

    Convention: right-hand rule: the normal points to the side from which the triangle (v0, v1, v2) appears
    counter-clockwise (in a frame with +y up).
    """
    return _safe_normalize(_face_cross(vertices, faces))


def vertex_face_incidence(faces: torch.Tensor, n_vertices: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sparse (N, F) vertex-face incidence matrix (1 where vertex n is a corner of face f), CSR layout.

    Pass it to :func:`vertex_normals` when the same topology is used many times: the sparse product is several
    times faster on the CPU than scattering face normals (0.7 vs 3.8 ms for the 9,409-vertex face at batch 1).

    Args:
        faces: (F, 3) int64 vertex indices per triangle.
        n_vertices: N.
        dtype: value dtype (match the vertices').
    """
    n_faces = faces.shape[0]
    rows = faces.T.reshape(-1)
    cols = torch.arange(n_faces, device=faces.device).repeat(3)
    values = torch.ones(3 * n_faces, dtype=dtype, device=faces.device)
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_vertices, n_faces), check_invariants=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.coalesce().to_sparse_csr()


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor, incidence: torch.Tensor | None = None) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    Args:
        vertices: (B, N, 3) vertex positions.
        faces: (F, 3) int64 vertex indices per triangle.
        incidence: optional (N, F) sparse matrix from :func:`vertex_face_incidence` (same device and dtype as
            ``vertices``) for a faster sum; the result is the same.

    Returns:
        (B, N, 3) unit normals: the normalised sum of the incident faces' normals weighted by triangle area.
        Vertices in no (non-degenerate) face get ~0 vectors, not NaN.

    Convention: orientation as in :func:`face_normals` (counter-clockwise triangles, right-hand rule).
    """
    fn = _face_cross(vertices, faces)  # length = 2 * area, i.e. already area-weighted
    if incidence is not None:
        b, n_faces = fn.shape[0], fn.shape[1]
        acc = incidence.to(fn.dtype) @ fn.permute(1, 0, 2).reshape(n_faces, b * 3)
        return _safe_normalize(acc.reshape(-1, b, 3).permute(1, 0, 2))
    acc = torch.zeros_like(vertices)
    for k in range(3):
        acc = acc.index_add(-2, faces[:, k], fn)
    return _safe_normalize(acc)


def gather_vertices(vertices: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select a subset of vertices (e.g. landmark vertices).

    Args:
        vertices: (B, N, 3) vertex positions (any trailing feature size works).
        index: (K,) int64 vertex indices.

    Returns:
        (B, K, 3) ``vertices[:, index]``.

    Convention: indices are 0-based into the N vertices.
    """
    return vertices.index_select(-2, index)
