"""Synthetic faces rendered on the fly from the morphable and albedo models, with exact 3D ground truth.

Random identity, expression, pose (yaw up to +/-90 degrees), albedo and SH lighting are decoded with the model's own
:meth:`FaceRecon.decode` (so the geometry conventions are exactly the model's), rendered with the CPU renderer over
backgrounds cut from real photos, and returned with 71-point landmark targets and the ground-truth vertices.
The mesh's eye and mouth openings are closed with dark caps for rendering.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerecon.models.facerecon import FaceParameters
from facerecon.render import render

logger = logging.getLogger(__name__)


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Closed boundary loops of a triangle mesh (vertex index arrays), longest first."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(edges, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    boundary = edges[counts[inverse.ravel()] == 1]
    nxt = {int(a): int(b) for a, b in boundary}
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen and v in nxt:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        if len(loop) >= 3:
            loops.append(np.array(loop, dtype=np.int64))
    return sorted(loops, key=len, reverse=True)


class SyntheticFaces:
    """Seeded generator of rendered faces with exact 3D ground truth.

    Args:
        model: a :class:`facerecon.FaceRecon` (its morphable model, albedo model and camera prior are used).
        seed: base seed; ``batch(n, index)`` is a pure function of (seed, index, n).
        backgrounds: optional (M, S, S, 3) uint8 background images; by default patches are cut from the corners of
            the 300-W crops in the data root (or smooth random gradients when those are absent).
        yaw_max: largest |yaw| in degrees.
        yaw_min: smallest |yaw| in degrees. 0 (default): half the faces are near-frontal (|yaw| <= 30) and half
            uniform in +/- ``yaw_max``; > 0: all faces have |yaw| uniform in [yaw_min, yaw_max] with a random sign
            (synthetic supervision for turned faces only, where real labels are scarce).
        pitch_std: standard deviation of the pitch in degrees (clipped at +/- 2.5 sigma, at most 60).
    """

    def __init__(self, model: Any, seed: int = 0, backgrounds: np.ndarray | None = None,
                 yaw_max: float = 90.0, pitch_std: float = 12.0, yaw_min: float = 0.0) -> None:
        if not 0 <= yaw_min <= yaw_max <= 90:
            raise ValueError(f"need 0 <= yaw_min <= yaw_max <= 90 degrees, got yaw_min={yaw_min}, yaw_max={yaw_max}")
        if pitch_std < 0:
            raise ValueError(f"pitch_std must be >= 0, got {pitch_std}")
        self.model = model
        self.seed = seed
        self.pitch_std = pitch_std
        self.size = model.config.input_size
        self.yaw_max = yaw_max
        self.yaw_min = yaw_min
        faces = model.morphable.faces.cpu().numpy()
        loops = boundary_loops(faces)[1:]  # all but the outer boundary: eye and mouth openings
        n = model.morphable.n_vertices
        caps = [np.stack([loop, np.roll(loop, -1), np.full_like(loop, n + k)], 1) for k, loop in enumerate(loops)]
        self.loops = [torch.from_numpy(loop) for loop in loops]
        self.render_faces = torch.cat([model.morphable.faces.cpu(), torch.from_numpy(np.concatenate(caps))]) \
            if caps else model.morphable.faces.cpu()
        self.backgrounds = backgrounds if backgrounds is not None else self._default_backgrounds()

    def _default_backgrounds(self, count: int = 256) -> np.ndarray:
        import cv2

        rng = np.random.default_rng(self.seed)
        s = self.size
        out = []
        try:
            from training.data import data_root

            images = sorted((data_root() / "300w" / "images").glob("*.jpg"))
        except FileNotFoundError:
            images = []
        for _ in range(count):
            if images:
                img = cv2.imread(str(images[int(rng.integers(len(images)))]))[..., ::-1]
                c = int(rng.integers(4))  # a corner, away from the centred face
                patch = img[:64, :64] if c == 0 else img[:64, -64:] if c == 1 else img[-64:, :64] if c == 2 \
                    else img[-64:, -64:]
                bg = cv2.resize(np.ascontiguousarray(patch), (s, s), interpolation=cv2.INTER_CUBIC)
            else:
                a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
                t = np.linspace(0, 1, s)[None, :, None]
                bg = np.round(255 * (a * (1 - t) + b * t)).astype(np.uint8).repeat(s, 0)
            out.append(bg)
        return np.stack(out)

    def sample_params(self, n: int, rng: np.random.Generator) -> FaceParameters:
        """Random parameters for ``n`` faces."""
        from facerecon.geometry import euler_to_matrix

        m = self.model
        k_id, k_alb = m.config.n_identity, m.config.n_albedo
        identity = rng.normal(0, 0.9, (n, k_id))
        expression = (rng.random((n, 53)) < 0.12) * rng.uniform(0, 0.7, (n, 53))
        jaw = m.morphable.expression_names.index("jawOpen")
        expression[:, jaw] = (rng.random(n) < 0.3) * rng.uniform(0, 0.6, n)
        if self.yaw_min > 0:
            yaw = rng.choice([-1.0, 1.0], n) * rng.uniform(self.yaw_min, self.yaw_max, n)
        else:
            frontal = rng.random(n) < 0.5
            yaw = np.where(frontal, rng.uniform(-30, 30, n), rng.uniform(-self.yaw_max, self.yaw_max, n))
        pitch_max = min(60.0, 2.5 * self.pitch_std)
        pitch = np.clip(rng.normal(0, self.pitch_std, n), -pitch_max, pitch_max)
        roll = np.clip(rng.normal(0, 10, n), -35, 35)
        angles = torch.from_numpy(np.radians(np.stack([yaw, pitch, roll], 1))).float()
        scale = float(m.scale_prior) * rng.uniform(0.85, 1.15, n)
        shift_px = rng.uniform(-0.06, 0.06, (n, 2)) * self.size
        translation = np.concatenate([shift_px / scale[:, None], np.zeros((n, 1))], 1)
        lighting = np.zeros((n, 9, 3))
        lighting[:, 0] = rng.uniform(0.6, 1.1, (n, 1)) * rng.uniform(0.9, 1.1, (n, 3))
        lighting[:, 1:4] = rng.normal(0, 0.25, (n, 3, 1))
        lighting[:, 4:] = rng.normal(0, 0.05, (n, 5, 1))
        f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        return FaceParameters(identity=f(identity), expression=f(expression), albedo=f(rng.normal(0, 1, (n, k_alb))),
                              lighting=f(lighting), rotation=euler_to_matrix(angles), translation=f(translation),
                              scale=f(scale))

    def batch(self, n: int, index: int = 0) -> dict[str, torch.Tensor]:
        """Render ``n`` faces; deterministic in (seed, index).

        Returns:
            ``image`` (n, 3, S, S) in [0, 1]; ``landmarks`` (n, 71, 2) crop pixels and ``weights`` (n, 71) (every
            point, self-occluded ones at their projected 3D position as in AFLW2000-3D); ``vertices`` (n, N, 3)
            camera frame mm; ``shape`` (n, N, 3) model frame mm; ``has_vertices`` (n,) True; ``rotation`` (n, 3, 3)
            model-to-camera rotation; ``yaw`` (n,) degrees.
        """
        rng = np.random.default_rng([self.seed, index, n])
        params = self.sample_params(n, rng)
        bg_idx = rng.integers(len(self.backgrounds), size=n)
        bg = torch.from_numpy(self.backgrounds[bg_idx]).permute(0, 3, 1, 2).float() / 255.0
        if rng.random() < 0.5:
            bg = bg.flip(-1)
        out = self.render_params(params, bg)
        noise = torch.from_numpy(rng.normal(0, 0.01, out["image"].shape)).float()
        out["image"] = (out["image"] + noise).clamp(0, 1)
        return out

    def render_params(self, params: FaceParameters, background: torch.Tensor) -> dict[str, torch.Tensor]:
        """Render faces with given parameters over (n, 3, S, S) backgrounds; same outputs as :meth:`batch`."""
        from training.data import extend_landmarks

        n = params.identity.shape[0]
        with torch.no_grad():
            out = self.model.decode(params)
            s = self.size
            screen = self.model.screen(out.vertices, params.scale)
            colors = out.colors.clamp(0, 1)
            if self.loops:
                # Cap vertices: the loop centroids, pushed 3 mm back, dark.
                centres = torch.stack([screen[:, loop].mean(1) for loop in self.loops], 1)
                centres[..., 2] += 3.0 * params.scale[:, None]
                screen = torch.cat([screen, centres], 1)
                colors = torch.cat([colors, torch.full((n, len(self.loops), 3), 0.08)], 1)
            image = render(screen, self.render_faces, colors, s, s, background=background).image
        landmarks = extend_landmarks(out.landmarks_2d)
        return {"image": image, "landmarks": landmarks, "weights": torch.ones(n, landmarks.shape[1]),
                "vertices": out.vertices, "shape": out.shape, "has_vertices": torch.ones(n, dtype=torch.bool),
                "rotation": params.rotation, "yaw": torch.rad2deg(out.euler[:, 0])}


def mix_batches(real: dict[str, torch.Tensor], synthetic: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate a real and a synthetic batch.

    Real samples get zero vertices, identity rotations and ``has_vertices`` False (no 3D ground truth); synthetic
    samples get zero ``depth_weights`` when the real batch has pseudo-label ``depth`` and a NaN ``yaw`` label when it
    has ``yaw`` (their exact rotation is in ``rotation``), and source id -1 when it has ``source``.
    """
    n_real = real["image"].shape[0]
    out = {k: torch.cat([real[k], synthetic[k].to(real[k].dtype)]) for k in ("image", "landmarks", "weights")}
    verts = synthetic["vertices"]
    out["vertices"] = torch.cat([verts.new_zeros((n_real, *verts.shape[1:])), verts])
    out["has_vertices"] = torch.cat([torch.zeros(n_real, dtype=torch.bool), synthetic["has_vertices"]])
    rot = synthetic["rotation"]
    out["rotation"] = torch.cat([torch.eye(3, dtype=rot.dtype).expand(n_real, 3, 3), rot])
    if "depth" in real:  # pseudo-label depth of real faces; synthetic faces have exact 3D ground truth instead
        n_syn = synthetic["image"].shape[0]
        for key in ("depth", "depth_weights"):
            out[key] = torch.cat([real[key], real[key].new_zeros((n_syn, *real[key].shape[1:]))])
    if "source" in real:  # synthetic faces have no data source: -1
        out["source"] = torch.cat([real["source"], real["source"].new_full((synthetic["image"].shape[0],), -1)])
    if "yaw" in real:
        yaw = real["yaw"].float()
        out["yaw"] = torch.cat([yaw, yaw.new_full((synthetic["image"].shape[0],), float("nan"))])
    return out


def save_preview(gen: SyntheticFaces, path: str | Path, n: int = 16) -> None:
    """Save a grid of ``n`` synthetic faces with their landmarks (for looking at)."""
    import cv2

    b = gen.batch(n)
    tiles = []
    for k in range(n):
        img = np.ascontiguousarray((b["image"][k].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
        for x, y in b["landmarks"][k, :68].numpy():
            cv2.circle(img, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
        tiles.append(img)
    cols = int(math.ceil(math.sqrt(n)))
    rows = [np.hstack(tiles[r * cols:(r + 1) * cols]) for r in range(n // cols)]
    cv2.imwrite(str(path), np.vstack(rows)[..., ::-1])
