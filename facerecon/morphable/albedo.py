"""The learned per-vertex albedo model: loading, saving, coefficient fitting and held-out evaluation.

The model is built by ``python -m training.build_albedo`` (see ``facerecon/assets/albedo/README.md``) and stored as
safetensors: ``mean`` (N, 3), ``basis`` (K, N, 3) with orthonormal flattened modes (``U^T U = I`` for the (3N, K)
matrix), ``std`` (K,) in descending order and ``explained_variance`` (K,) cumulative ratios, plus string metadata
(surface, vertex count, topology hash, ...). Albedo values are sRGB-encoded colours in [0, 1], the same space as the
photo: the renderer's ``albedo * sh_shading`` is compared with photo pixel values directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from facerecon.morphable.model import AlbedoModel

logger = logging.getLogger(__name__)

__all__ = [
    "ALBEDO_FILE",
    "DEFAULT_ALBEDO",
    "albedo_metadata",
    "default_albedo_path",
    "fit_albedo_coefficients",
    "load_albedo_model",
    "reconstruction_rmse",
    "resolve_albedo_path",
    "save_albedo_model",
    "topology_hash",
]

#: Name of the bundled learned albedo model (see :func:`resolve_albedo_path`).
DEFAULT_ALBEDO = "default"
ALBEDO_FILE = "albedo_model.safetensors"
_REQUIRED = ("mean", "basis", "std")


def default_albedo_path() -> Path:
    """Path of the bundled model: ``facerecon/assets/albedo/albedo_model.safetensors``."""
    return Path(__file__).resolve().parents[1] / "assets" / "albedo" / ALBEDO_FILE


def resolve_albedo_path(path_or_name: str | os.PathLike = DEFAULT_ALBEDO) -> Path:
    """Resolve :data:`DEFAULT_ALBEDO` to the bundled file, a folder to its ``albedo_model.safetensors``.

    Raises:
        FileNotFoundError: the file does not exist (the message says what was looked for).
    """
    if str(path_or_name) == DEFAULT_ALBEDO:
        path = default_albedo_path()
        hint = "the bundled albedo model is missing; rebuild it with `python -m training.build_albedo`"
    else:
        path = Path(path_or_name).expanduser()
        if path.is_dir():
            path = path / ALBEDO_FILE
        hint = f"pass '{DEFAULT_ALBEDO}' for the bundled model, or the path of an {ALBEDO_FILE} file"
    if not path.is_file():
        raise FileNotFoundError(f"albedo model '{path_or_name}' not found at {path}: {hint}")
    return path


def topology_hash(faces: torch.Tensor, n_vertices: int) -> str:
    """Short content hash of a mesh topology: sha256 of the int64 triangle array and the vertex count (16 hex)."""
    h = hashlib.sha256()
    h.update(str(int(n_vertices)).encode())
    h.update(faces.detach().to(device="cpu", dtype=torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def albedo_metadata(path_or_name: str | os.PathLike = DEFAULT_ALBEDO) -> dict[str, str]:
    """The string metadata stored with an albedo model file (see :func:`save_albedo_model`)."""
    from safetensors import safe_open

    with safe_open(str(resolve_albedo_path(path_or_name)), framework="pt") as f:
        return dict(f.metadata() or {})


def save_albedo_model(path: str | os.PathLike, mean: torch.Tensor, basis: torch.Tensor, std: torch.Tensor,
                      explained_variance: torch.Tensor, metadata: Mapping[str, object]) -> Path:
    """Write an albedo model file (atomically).

    Args:
        path: output ``.safetensors`` file (its folder is created).
        mean: (N, 3) mean albedo in [0, 1].
        basis: (K, N, 3) orthonormal modes (flattened ``U^T U = I``).
        std: (K,) standard deviation of each mode, descending.
        explained_variance: (K,) cumulative explained-variance ratio.
        metadata: extra information; values are stored as strings (non-strings as JSON).

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    if basis.ndim != 3 or basis.shape[1:] != mean.shape or std.shape != basis.shape[:1]:
        raise ValueError(f"inconsistent shapes: mean {tuple(mean.shape)}, basis {tuple(basis.shape)}, "
                         f"std {tuple(std.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta.setdefault("n_vertices", str(mean.shape[0]))
    meta.setdefault("n_components", str(basis.shape[0]))
    tensors = {"mean": mean, "basis": basis, "std": std, "explained_variance": explained_variance}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    path.chmod(0o644)
    return path


def load_albedo_model(path_or_name: str | os.PathLike = DEFAULT_ALBEDO, n_components: int | None = None,
                      n_vertices: int | None = None, faces: torch.Tensor | None = None) -> AlbedoModel:
    """Load a learned albedo model as an :class:`~facerecon.morphable.model.AlbedoModel`.

    Args:
        path_or_name: :data:`DEFAULT_ALBEDO` ("default", the bundled model), a ``.safetensors`` file or its folder.
        n_components: keep the first K components (all when None).
        n_vertices: vertex count of the morphable model it is used with (checked when given).
        faces: (F, 3) triangles of that morphable model; when given, the stored topology hash is checked too.

    Returns:
        The model (float32 buffers on CPU); ``forward(coeffs (B, K)) -> (B, N, 3)`` sRGB albedo in [0, 1].

    Raises:
        FileNotFoundError: no such model file.
        ValueError: the file is incomplete, ``n_components`` is out of range, or the topology does not match.
    """
    from safetensors import safe_open

    path = resolve_albedo_path(path_or_name)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        missing = [k for k in _REQUIRED if k not in f.keys()]
        if missing:
            raise ValueError(f"{path} is not an albedo model: missing tensors {missing}")
        mean, basis, std = (f.get_tensor(k).float() for k in _REQUIRED)
    n, k_max = mean.shape[0], basis.shape[0]
    if n_vertices is not None and n != n_vertices:
        raise ValueError(f"albedo model {path} has {n} vertices but the morphable model has {n_vertices} "
                         f"(surface '{meta.get('surface', '?')}'): rebuild it for this topology with "
                         "`python -m training.build_albedo`")
    if faces is not None and "topology_hash" in meta:
        expected = topology_hash(faces, n)
        if meta["topology_hash"] != expected:
            raise ValueError(f"albedo model {path} was built for another mesh topology "
                             f"(hash {meta['topology_hash']}, this morphable model {expected})")
    if n_components is not None:
        if not 1 <= n_components <= k_max:
            raise ValueError(f"n_components must be in [1, {k_max}] for {path}, got {n_components}")
        basis, std = basis[:n_components], std[:n_components]
    return AlbedoModel(mean, basis, std)


def _normal_equations(mean: torch.Tensor, basis: torch.Tensor, std: torch.Tensor, albedo: torch.Tensor,
                      weights: torch.Tensor, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Gram matrices (B, K, K) and right-hand sides (B, K) of the scaled modes, in face chunks."""
    b, k = albedo.shape[0], basis.shape[0]
    x = (basis * std[:, None, None]).reshape(k, -1).to(albedo.dtype)  # (K, 3N) scaled modes sigma_k U_k
    w = weights.to(albedo.dtype).repeat_interleave(3, dim=-1)  # (B, 3N)
    r = (albedo - mean).reshape(b, -1) * w
    gram = torch.cat([(x[None] * w[i:i + chunk, None]) @ x.T for i in range(0, b, chunk)]) if b else \
        albedo.new_zeros(0, k, k)
    return gram, r @ x.T


def _solve_map(gram: torch.Tensor, rhs: torch.Tensor, noise: float) -> torch.Tensor:
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    return torch.linalg.solve(gram + noise**2 * eye, rhs.unsqueeze(-1)).squeeze(-1)


def fit_albedo_coefficients(mean: torch.Tensor, basis: torch.Tensor, std: torch.Tensor, albedo: torch.Tensor,
                            weights: torch.Tensor, noise: float = 0.02) -> torch.Tensor:
    """MAP coefficients of partially observed albedos under the model (Gaussian prior ``c ~ N(0, I)``).

    Minimises ``sum_v w_v |mean_v + sum_k c_k sigma_k U_kv - a_v|^2 / noise^2 + |c|^2`` per face.

    Args:
        mean: (N, 3) mean albedo.
        basis: (K, N, 3) modes.
        std: (K,) mode standard deviations.
        albedo: (B, N, 3) observed albedo (values where ``weights`` is 0 are ignored).
        weights: (B, N) per-vertex confidence in [0, 1].
        noise: per-channel observation noise (albedo units) that balances the data against the prior.

    Returns:
        (B, K) coefficients.

    Convention: albedo in the model's colour space (sRGB values in [0, 1]).
    """
    gram, rhs = _normal_equations(mean, basis, std, albedo, weights)
    return _solve_map(gram, rhs, noise)


def reconstruction_rmse(mean: torch.Tensor, basis: torch.Tensor, std: torch.Tensor, albedo: torch.Tensor,
                        weights: torch.Tensor, ks: Sequence[int] = (0, 5, 10, 20, 40), noise: float = 0.02,
                        ) -> dict[int, float]:
    """Weighted RMSE of observed albedos reconstructed with the first K components (K = 0: the mean alone).

    For each K, the MAP coefficients of :func:`fit_albedo_coefficients` with the first K modes, then
    ``sqrt(sum_{b, v, c} w_bv (recon - a)^2 / (3 sum_{b, v} w_bv))`` pooled over all faces.

    Args:
        mean: (N, 3) mean albedo.
        basis: (K_max, N, 3) modes.
        std: (K_max,) standard deviations.
        albedo: (B, N, 3) observed (e.g. held-out) albedos.
        weights: (B, N) confidence of each observation (0 = unobserved).
        ks: numbers of components to evaluate (each in [0, K_max]).
        noise: see :func:`fit_albedo_coefficients`.

    Returns:
        ``{K: rmse}`` in albedo units.
    """
    bad = [k for k in ks if not 0 <= k <= basis.shape[0]]
    if bad:
        raise ValueError(f"K values {bad} are outside [0, {basis.shape[0]}]")
    k_max = max(ks, default=0)
    gram, rhs = _normal_equations(mean, basis[:k_max], std[:k_max], albedo, weights)
    denom = 3.0 * weights.sum().clamp_min(1e-12)
    out: dict[int, float] = {}
    for k in ks:
        recon = mean.expand_as(albedo)
        if k > 0:
            c = _solve_map(gram[:, :k, :k], rhs[:, :k], noise)
            recon = recon + torch.einsum("bk,knc->bnc", c * std[:k], basis[:k])
        err = ((recon - albedo) ** 2).sum(-1) * weights
        out[k] = float(torch.sqrt(err.sum() / denom))
    return out
