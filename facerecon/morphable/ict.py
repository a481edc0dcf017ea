"""Locate ICT-FaceKit, build the compact face morphable model from it, and cache the result.

ICT-FaceKit (https://github.com/ICT-VGL/ICT-FaceKit, MIT licence, (c) 2020 USC Institute for Creative
Technologies) is never shipped with facerecon: it is found at run time, the model is built once and the result
is cached as safetensors under the facerecon cache folder, keyed by the content hash of the source files.

Resolution order of the source (see :func:`find_ict_facekit`):

1. an explicit ``path`` argument (the ``ict-facekit`` folder or the ``ict_facekit_light.npz`` file);
2. the ``FACERECON_ICT`` environment variable (same);
3. a default search for ``shared/ict-facekit`` beside the working directory, the checkout or any of their parents
   (a checkout at ``repo/`` finds ``repo/../shared/ict-facekit``);
4. a previously built model in the cache (``FACERECON_CACHE``, else ``$XDG_CACHE_HOME/facerecon``, else
   ``~/.cache/facerecon``).

Otherwise :class:`~facerecon.errors.MorphableModelNotFoundError` explains where ICT-FaceKit comes from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facerecon.errors import MorphableModelNotFoundError

logger = logging.getLogger(__name__)

ICT_NPZ_NAME = "ict_facekit_light.npz"
ICT_INDICES_NAME = "vertex_indices.json"
ENV_ICT = "FACERECON_ICT"
ENV_CACHE = "FACERECON_CACHE"
BUILD_VERSION = 1
CM_TO_MM = 10.0

#: Materials of the fitted surface for each ``surface`` option.
SURFACES: dict[str, tuple[str, ...]] = {
    "face": ("M_Face",),
    "head": ("M_Face", "M_BackHead"),
}

#: Left/right mirror permutation of the 68 iBUG points: ``mirrored[i] = points[MIRROR_68[i]]`` after x -> -x.
MIRROR_68: tuple[int, ...] = (
    *range(16, -1, -1),  # jaw
    *range(26, 21, -1), *range(21, 16, -1),  # brows
    27, 28, 29, 30,  # nose bridge
    35, 34, 33, 32, 31,  # nostrils
    45, 44, 43, 42, 47, 46,  # image-left eye <- image-right eye
    39, 38, 37, 36, 41, 40,
    54, 53, 52, 51, 50, 49, 48,  # outer lip top
    59, 58, 57, 56, 55,  # outer lip bottom
    64, 63, 62, 61, 60,  # inner lip top
    67, 66, 65,  # inner lip bottom
)

ICT_HELP = (
    "ICT-FaceKit (MIT licence, https://github.com/ICT-VGL/ICT-FaceKit) is needed to build the facerecon "
    "morphable model and is not shipped with facerecon. Point facerecon at a folder holding "
    f"'{ICT_NPZ_NAME}' and '{ICT_INDICES_NAME}' (the re-encoded FaceXModel) with the path argument or the "
    f"{ENV_ICT} environment variable, or place it at '<checkout>/../shared/ict-facekit'."
)


def cache_dir() -> Path:
    """Folder where facerecon caches built artefacts (``FACERECON_CACHE`` > ``XDG_CACHE_HOME`` > ``~/.cache``)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "facerecon"


def _as_ict_dir(path: str | os.PathLike) -> Path | None:
    p = Path(path).expanduser()
    if p.is_file() and p.name == ICT_NPZ_NAME:
        p = p.parent
    if (p / ICT_NPZ_NAME).is_file() and (p / ICT_INDICES_NAME).is_file():
        return p
    return None


def _default_search_roots() -> list[Path]:
    roots: list[Path] = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for p in (start, *start.parents):
            if p not in roots:
                roots.append(p)
    return roots


def find_ict_facekit(path: str | os.PathLike | None = None) -> Path | None:
    """Find the ICT-FaceKit source folder.

    Args:
        path: explicit folder or npz file; when given it must be valid.

    Returns:
        The folder holding ``ict_facekit_light.npz`` and ``vertex_indices.json``, or None when only the
        environment variable and default search were tried and found nothing.

    Raises:
        MorphableModelNotFoundError: ``path`` or ``FACERECON_ICT`` is set but does not hold ICT-FaceKit.
    """
    if path is not None:
        found = _as_ict_dir(path)
        if found is None:
            raise MorphableModelNotFoundError(f"'{path}' does not contain {ICT_NPZ_NAME} and {ICT_INDICES_NAME}. "
                                              + ICT_HELP)
        return found
    env = os.environ.get(ENV_ICT)
    if env:
        found = _as_ict_dir(env)
        if found is None:
            raise MorphableModelNotFoundError(f"{ENV_ICT}='{env}' does not contain {ICT_NPZ_NAME} and "
                                              f"{ICT_INDICES_NAME}. " + ICT_HELP)
        return found
    for root in _default_search_roots():
        found = _as_ict_dir(root / "shared" / "ict-facekit")
        if found is not None:
            return found
    return None


def _content_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for name in (ICT_NPZ_NAME, ICT_INDICES_NAME):
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _cache_name(source_hash: str, surface: str) -> str:
    return f"ict_{surface}_v{BUILD_VERSION}_{source_hash}.safetensors"


@dataclass(frozen=True)
class MorphableModelData:
    """Arrays of the built morphable model (float32 / int64 torch tensors on CPU).

    Convention: model frame, millimetres, +x subject's left, +y up, +z towards the viewer; origin at the
    centre of the 68 landmarks' x/y bounding box at the depth of the jaw ends (landmarks 0 and 16).

    Attributes:
        mean: (N, 3) neutral vertices.
        identity_basis: (K, N, 3) orthonormal identity modes (as a (3N, K) matrix: U^T U = I), K = 100.
        identity_std: (K,) standard deviation of each mode in mm (coefficients are ~N(0, 1)).
        explained_variance: (K,) cumulative explained-variance ratio of the identity modes.
        expression_basis: (E, N, 3) blendshape offsets in mm, weights in [0, 1], E = 53.
        faces: (F, 3) triangles, counter-clockwise seen from outside.
        uvs: (T, 2) texture coordinates; face_uvs: (F, 3) uv index per triangle corner.
        landmark_index: (68,) vertex index of each iBUG landmark.
        landmark_mirror: (68,) mirror permutation of the landmarks.
        vertex_mirror: (N,) index of the mirror-image vertex (nearest neighbour of (-x, y, z)).
        expression_names: ARKit-style names of the 53 blendshapes.
        source_vertex_index: (N,) index of each surface vertex in the full ICT mesh.
    """

    mean: torch.Tensor
    identity_basis: torch.Tensor
    identity_std: torch.Tensor
    explained_variance: torch.Tensor
    expression_basis: torch.Tensor
    faces: torch.Tensor
    uvs: torch.Tensor
    face_uvs: torch.Tensor
    landmark_index: torch.Tensor
    landmark_mirror: torch.Tensor
    vertex_mirror: torch.Tensor
    source_vertex_index: torch.Tensor
    expression_names: tuple[str, ...]
    surface: str
    source_hash: str

    def tensors(self) -> dict[str, torch.Tensor]:
        """All tensor fields by name."""
        return {k: v for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}


def build_from_ict(folder: Path, surface: str = "face") -> MorphableModelData:
    """Build the compact morphable model from an ICT-FaceKit folder (about 2 s on 2 CPU cores).

    Args:
        folder: folder with ``ict_facekit_light.npz`` and ``vertex_indices.json``.
        surface: "face" (material M_Face) or "head" (M_Face + M_BackHead).

    Returns:
        The built model; see :class:`MorphableModelData` for layout and units.
    """
    if surface not in SURFACES:
        raise ValueError(f"surface must be one of {sorted(SURFACES)}, got '{surface}'")
    src = np.load(folder / ICT_NPZ_NAME)
    with open(folder / ICT_INDICES_NAME) as f:
        indices = json.load(f)
    materials = [str(m) for m in src["material_names"]]
    wanted = [materials.index(m) for m in SURFACES[surface]]
    poly_mask = np.isin(src["face_material"], wanted)
    polys = src["faces"][poly_mask]
    poly_uvs = src["face_uvs"][poly_mask]

    # Quads (a, b, c, d) -> (a, b, c), (a, c, d); triangles carry -1 in the 4th column.
    is_quad = polys[:, 3] >= 0
    tris = np.concatenate([polys[:, [0, 1, 2]], polys[is_quad][:, [0, 2, 3]]])
    tri_uvs = np.concatenate([poly_uvs[:, [0, 1, 2]], poly_uvs[is_quad][:, [0, 2, 3]]])

    used = np.unique(tris)
    remap = np.full(src["neutral"].shape[0], -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    faces = remap[tris]
    uv_used = np.unique(tri_uvs)
    uv_remap = np.full(src["uvs"].shape[0], -1, dtype=np.int64)
    uv_remap[uv_used] = np.arange(uv_used.size)
    face_uvs = uv_remap[tri_uvs]
    uvs = src["uvs"][uv_used]

    lmk_src = np.asarray(indices["idx_to_landmark_verts"], dtype=np.int64)
    landmark_index = remap[lmk_src]
    if (landmark_index < 0).any():
        raise ValueError(f"landmark vertices are not all on the '{surface}' surface")

    neutral = src["neutral"][used].astype(np.float64) * CM_TO_MM
    lmk = neutral[landmark_index]
    origin = np.array([
        0.0,
        0.5 * (lmk[:, 1].min() + lmk[:, 1].max()),
        0.5 * (lmk[0, 2] + lmk[16, 2]),
    ])
    mean = neutral - origin

    # Identity: modes are pre-scaled by their std; re-orthonormalise with an SVD of the (3N, 100) mode matrix.
    modes = (src["identities"][:, used].astype(np.float64) * CM_TO_MM - neutral[None]).reshape(100, -1)
    u, s, _ = np.linalg.svd(modes.T, full_matrices=False)
    # Deterministic sign: the largest-magnitude entry of each mode is positive.
    signs = np.sign(u[np.abs(u).argmax(0), np.arange(u.shape[1])])
    u = u * signs
    identity_basis = u.T.reshape(-1, used.size, 3)
    explained = np.cumsum(s**2) / np.sum(s**2)

    expression_basis = src["expressions"][:, used].astype(np.float64) * CM_TO_MM - neutral[None]

    vertex_mirror = _mirror_map(torch.from_numpy(mean))
    names = tuple(str(n) for n in src["expression_names"])
    t = torch.from_numpy
    return MorphableModelData(
        mean=t(mean).float(),
        identity_basis=t(identity_basis).float(),
        identity_std=t(s).float(),
        explained_variance=t(explained).float(),
        expression_basis=t(expression_basis).float(),
        faces=t(faces).long(),
        uvs=t(uvs).float(),
        face_uvs=t(face_uvs).long(),
        landmark_index=t(landmark_index).long(),
        landmark_mirror=torch.tensor(MIRROR_68, dtype=torch.long),
        vertex_mirror=vertex_mirror,
        source_vertex_index=t(used).long(),
        expression_names=names,
        surface=surface,
        source_hash="",
    )


def _mirror_map(vertices: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Index of the nearest vertex to each vertex mirrored in x: (N, 3) -> (N,)."""
    mirrored = vertices * torch.tensor([-1.0, 1.0, 1.0], dtype=vertices.dtype)
    out = []
    for start in range(0, vertices.shape[0], chunk):
        d = torch.cdist(mirrored[start:start + chunk], vertices)
        out.append(d.argmin(1))
    return torch.cat(out).long()


def _save(data: MorphableModelData, path: Path) -> None:
    from safetensors.torch import save_file

    meta = {
        "expression_names": json.dumps(list(data.expression_names)),
        "surface": data.surface,
        "source_hash": data.source_hash,
        "build_version": str(BUILD_VERSION),
        "licence": "Derived from ICT-FaceKit, MIT licence, (c) 2020 USC Institute for Creative Technologies.",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in data.tensors().items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _load(path: Path) -> MorphableModelData:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return MorphableModelData(
        **tensors,
        expression_names=tuple(json.loads(meta["expression_names"])),
        surface=meta["surface"],
        source_hash=meta["source_hash"],
    )


def load_morphable_data(path: str | os.PathLike | None = None, surface: str = "face") -> MorphableModelData:
    """Load the built morphable model, building and caching it from ICT-FaceKit on first use.

    Args:
        path: explicit ICT-FaceKit folder or npz (optional; see the module docstring for the search order).
        surface: "face" or "head".

    Returns:
        The morphable model arrays.

    Raises:
        MorphableModelNotFoundError: no ICT-FaceKit source and no cached build.
    """
    if surface not in SURFACES:
        raise ValueError(f"surface must be one of {sorted(SURFACES)}, got '{surface}'")
    folder = find_ict_facekit(path)
    cdir = cache_dir() / "morphable"
    if folder is None:
        cached = sorted(cdir.glob(f"ict_{surface}_v{BUILD_VERSION}_*.safetensors"), key=lambda p: p.stat().st_mtime)
        if cached:
            logger.info("ICT-FaceKit source not found; using the cached build %s", cached[-1])
            return _load(cached[-1])
        raise MorphableModelNotFoundError("No ICT-FaceKit source found and no cached build in "
                                          f"'{cdir}'. " + ICT_HELP)
    source_hash = _content_hash(folder)
    target = cdir / _cache_name(source_hash, surface)
    if target.is_file():
        try:
            return _load(target)
        except Exception as err:  # a corrupt cache entry is rebuilt, not fatal
            logger.warning("Rebuilding the unreadable cached morphable model %s (%s)", target, err)
    logger.info("Building the '%s' morphable model from %s (one time, cached in %s)", surface, folder, target)
    data = build_from_ict(folder, surface)
    data = MorphableModelData(**{**data.__dict__, "source_hash": source_hash})
    try:
        _save(data, target)
    except OSError as err:
        logger.warning("Could not cache the morphable model in %s (%s); it will be rebuilt next time", target, err)
    return data
