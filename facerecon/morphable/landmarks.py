"""Landmark definitions: which surface vertex stands for each of the 68 iBUG points.

``"ict"`` is ICT-FaceKit's own choice of 68 landmark vertices. Other definitions are JSON files written by
``python -m training.fit_landmarks`` (the bundled ``"refined"`` one lives in ``facerecon/assets/landmarks/``): the
vertex of the predicted meshes nearest, on average, to the annotated points of the training split, chosen in
mirror-symmetric pairs. A file records the surface, its vertex count and topology hash, and is refused for another
mesh.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from facerecon.morphable.albedo import topology_hash

__all__ = ["ICT_LANDMARKS", "LANDMARK_FORMAT", "load_landmark_index", "resolve_landmark_path", "save_landmark_index"]

#: ICT-FaceKit's own landmark vertices (no file needed).
ICT_LANDMARKS = "ict"
LANDMARK_FORMAT = "facerecon-landmarks/1"


def _assets_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "assets" / "landmarks"


def resolve_landmark_path(name_or_path: str | os.PathLike) -> Path:
    """A bundled definition's name (``"refined"``) or a path -> the JSON file.

    Raises:
        FileNotFoundError: neither a bundled definition nor an existing file.
    """
    bundled = _assets_dir() / f"{name_or_path}.json"
    if bundled.is_file():
        return bundled
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    names = sorted(p.stem for p in _assets_dir().glob("*.json")) if _assets_dir().is_dir() else []
    raise FileNotFoundError(f"landmark definition {str(name_or_path)!r} not found: use {ICT_LANDMARKS!r}, a bundled "
                            f"definition {names} or the path of a JSON file written by training.fit_landmarks")


def load_landmark_index(name_or_path: str | os.PathLike, surface: str, faces: torch.Tensor,
                        n_vertices: int) -> torch.Tensor | None:
    """The (68,) landmark vertex indices of a definition, checked against the mesh; None for :data:`ICT_LANDMARKS`.

    Raises:
        FileNotFoundError: unknown definition.
        ValueError: the file is malformed or was made for another surface / topology.
    """
    if str(name_or_path) == ICT_LANDMARKS:
        return None
    path = resolve_landmark_path(name_or_path)
    try:
        d = json.loads(path.read_text())
        index = torch.tensor(d["landmark_index"], dtype=torch.long)
        fmt, file_surface, n, topo = d["format"], d["surface"], int(d["n_vertices"]), d["topology_hash"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"landmark definition {path} is malformed ({e!r})") from e
    if fmt != LANDMARK_FORMAT:
        raise ValueError(f"landmark definition {path} has format {fmt!r}, expected {LANDMARK_FORMAT!r}")
    if file_surface != surface or n != n_vertices or topo != topology_hash(faces, n_vertices):
        raise ValueError(f"landmark definition {path} was made for the {file_surface!r} surface with {n} vertices "
                         f"(topology {topo}); this morphable model is {surface!r} with {n_vertices} vertices "
                         f"(topology {topology_hash(faces, n_vertices)})")
    if index.shape != (68,) or int(index.min()) < 0 or int(index.max()) >= n_vertices:
        raise ValueError(f"landmark definition {path} must list 68 vertex indices in [0, {n_vertices})")
    return index


def save_landmark_index(path: str | os.PathLike, index: torch.Tensor, surface: str, faces: torch.Tensor,
                        n_vertices: int, report: dict[str, Any] | None = None) -> Path:
    """Write a landmark definition JSON (see :func:`load_landmark_index`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = {"format": LANDMARK_FORMAT, "surface": surface, "n_vertices": int(n_vertices),
         "topology_hash": topology_hash(faces, n_vertices), "landmark_index": [int(i) for i in index.tolist()],
         "report": report or {}}
    path.write_text(json.dumps(d, indent=1) + "\n")
    return path
