"""Mesh export of a reconstruction: trimesh objects and GLB / OBJ / PLY / JSON files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import trimesh

EXPORT_FORMATS = ("glb", "obj", "ply", "json")
COLOR_MODES = ("shaded", "albedo", "none")


class MeshExport:
    """Export methods shared by reconstruction results.

    Needs the attributes ``vertices_view``, ``vertices_neutral``, ``faces``, ``colors``, ``albedo`` and a
    ``to_dict()`` method on the class it is mixed into.
    """

    vertices_view: np.ndarray
    vertices_neutral: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    albedo: np.ndarray

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - provided by the concrete class
        """JSON-serialisable parameters (implemented by the concrete result class)."""
        raise NotImplementedError

    def to_trimesh(self, colors: str | np.ndarray = "shaded", neutral: bool = False) -> trimesh.Trimesh:
        """The mesh as a ``trimesh.Trimesh`` in mm, view frame (+y up, +z towards the camera).

        Args:
            colors: "shaded" (albedo x lighting), "albedo", "none", or an (N, 3) array of RGB values in [0, 1]
                (e.g. colours sampled from the photo).
            neutral: use the neutral-expression shape.
        """
        import trimesh

        custom = isinstance(colors, np.ndarray)
        if custom and colors.shape != self.colors.shape:
            raise ValueError(f"vertex colours must have shape {self.colors.shape}, got {colors.shape}")
        if not custom and colors not in COLOR_MODES:
            raise ValueError(f"colors must be one of {COLOR_MODES} or an (N, 3) array, got {colors!r}")
        verts = self.vertices_neutral if neutral else self.vertices_view
        vertex_colors = None
        if custom or colors != "none":
            rgb = colors if custom else (self.colors if colors == "shaded" else self.albedo)
            rgba = np.concatenate([np.clip(rgb, 0.0, 1.0), np.ones((rgb.shape[0], 1), dtype=rgb.dtype)], axis=1)
            vertex_colors = np.round(rgba * 255).astype(np.uint8)
        return trimesh.Trimesh(vertices=np.asarray(verts, dtype=np.float64), faces=self.faces,
                               vertex_colors=vertex_colors, process=False)

    def export(self, path: str | os.PathLike, colors: str | np.ndarray = "shaded", neutral: bool = False) -> Path:
        """Write the mesh (``.glb``, ``.obj``, ``.ply``) or the parameters (``.json``), chosen by the suffix.

        Args:
            path: output file; its suffix selects the format.
            colors: vertex colours, see :meth:`to_trimesh`.
            neutral: export the neutral-expression shape.

        Returns:
            The written path.
        """
        path = Path(path)
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unsupported export format '{path.suffix}' for {path}; use one of "
                             f"{', '.join('.' + f for f in EXPORT_FORMATS)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "json":
            path.write_text(json.dumps(self.to_dict(), indent=1))
            return path
        mesh = self.to_trimesh(colors=colors, neutral=neutral)
        if fmt == "obj":
            from trimesh.exchange.obj import export_obj

            path.write_text(export_obj(mesh, include_color=mesh.visual.kind == "vertex", include_normals=False,
                                       include_texture=False))
        else:
            mesh.export(path, file_type=fmt)
        return path
