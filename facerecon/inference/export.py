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

    Needs the attributes ``vertices_view``, ``vertices_neutral``, ``faces``, ``colors``, ``albedo``, ``uvs``,
    ``face_uvs`` and a ``to_dict()`` method on the class it is mixed into.
    """

    vertices_view: np.ndarray
    vertices_neutral: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    albedo: np.ndarray
    uvs: np.ndarray
    face_uvs: np.ndarray

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - provided by the concrete class
        """JSON-serialisable parameters (implemented by the concrete result class)."""
        raise NotImplementedError

    def to_trimesh(self, colors: str | np.ndarray = "shaded", neutral: bool = False, texture: bool = False,
                   texture_size: int = 512) -> trimesh.Trimesh:
        """The mesh as a ``trimesh.Trimesh`` in mm, view frame (+y up, +z towards the camera).

        Args:
            colors: "shaded" (albedo x lighting), "albedo", "none", or an (N, 3) array of RGB values in [0, 1]
                (e.g. colours sampled from the photo).
            neutral: use the neutral-expression shape.
            texture: bake the colours into a UV texture (the mesh is split along its UV seams) instead of
                per-vertex colours.
            texture_size: texture side in pixels.
        """
        import trimesh

        if texture:
            from PIL import Image

            from facerecon.inference.texture import textured_mesh

            rgb = self._rgb(colors)
            if rgb is None:
                raise ValueError("a texture needs colours: pass colors='shaded', 'albedo' or an (N, 3) array")
            verts = self.vertices_neutral if neutral else self.vertices_view
            tm = textured_mesh(verts, self.faces, self.uvs, self.face_uvs, rgb, texture_size)
            image = Image.fromarray(tm.texture)
            # White base colour (trimesh's SimpleMaterial default of 0.4 grey would darken the texture), matte.
            material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, baseColorFactor=[255, 255, 255, 255],
                                                           metallicFactor=0.0, roughnessFactor=1.0)
            visual = trimesh.visual.TextureVisuals(uv=tm.uvs, image=image, material=material)
            return trimesh.Trimesh(vertices=np.asarray(tm.vertices, dtype=np.float64), faces=tm.faces, visual=visual,
                                   process=False)

        verts = self.vertices_neutral if neutral else self.vertices_view
        vertex_colors = None
        rgb = self._rgb(colors)
        if rgb is not None:
            rgba = np.concatenate([np.clip(rgb, 0.0, 1.0), np.ones((rgb.shape[0], 1), dtype=rgb.dtype)], axis=1)
            vertex_colors = np.round(rgba * 255).astype(np.uint8)
        return trimesh.Trimesh(vertices=np.asarray(verts, dtype=np.float64), faces=self.faces,
                               vertex_colors=vertex_colors, process=False)

    def _rgb(self, colors: str | np.ndarray) -> np.ndarray | None:
        """(N, 3) colours for a colour mode or array (None for "none")."""
        if isinstance(colors, np.ndarray):
            if colors.shape != self.colors.shape:
                raise ValueError(f"vertex colours must have shape {self.colors.shape}, got {colors.shape}")
            return colors
        if colors not in COLOR_MODES:
            raise ValueError(f"colors must be one of {COLOR_MODES} or an (N, 3) array, got {colors!r}")
        return None if colors == "none" else (self.colors if colors == "shaded" else self.albedo)

    def export(self, path: str | os.PathLike, colors: str | np.ndarray = "shaded", neutral: bool = False,
               texture: bool = False) -> Path:
        """Write the mesh (``.glb``, ``.obj``, ``.ply``) or the parameters (``.json``), chosen by the suffix.

        Args:
            path: output file; its suffix selects the format.
            colors: vertex colours, see :meth:`to_trimesh`.
            neutral: export the neutral-expression shape.
            texture: bake the colours into a UV texture: embedded in a GLB; for OBJ, a ``.mtl`` and a ``.png`` are
                written next to the ``.obj`` (PLY keeps vertex colours).

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
        mesh = self.to_trimesh(colors=colors, neutral=neutral, texture=texture and fmt != "ply")
        if fmt == "obj":
            from trimesh.exchange.obj import export_obj

            textured = mesh.visual.kind == "texture"
            text, files = export_obj(mesh, include_color=not textured, include_normals=False,
                                     include_texture=textured, return_texture=True, mtl_name=f"{path.stem}.mtl")
            path.write_text(text)
            for name, data in files.items():
                (path.parent / name).write_bytes(data)
        else:
            mesh.export(path, file_type=fmt)
        return path
