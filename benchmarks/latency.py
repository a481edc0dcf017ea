"""CPU latency of the model and the pipeline: median / p90 ms per image, faces/s at batch 32, peak RSS.

    python benchmarks/latency.py [--model DIR] [--data ../shared/aflw2000-3d-dev] [--images 200] [--threads 2]
                                 [--backend torch onnx] [--json OUT]

Stages, each timed once per image over ``--images`` photos after a warm-up (batch 1, ``torch.set_num_threads``):

- ``forward``: the regressor + 68 landmarks (``model(x, landmarks_only=True)``; with ``--backend onnx`` the exported
  regressor in onnxruntime); ``forward + mesh``: also the dense mesh, normals and colours (``model(x)``);
- ``reconstruct(box)``: ``reconstruct()`` of a 450 x 450 photo given a face box (crop, regress, re-crop from the
  landmarks, regress with the mesh, assemble the result);
- ``reconstruct(detect)``: the same with face detection;
- ``forward, flip test`` and ``reconstruct(detect), flip test``: with ``flip_test=True`` (the mirrored crop is
  regressed too and averaged);
- ``forward, flip + shift test`` and ``reconstruct(detect), flip + shift test``: also ``shift_test=True`` (4 crops
  shifted by 7 % of the side are regressed too, 10 regressions per face; the app's and CLI's default);
- ``export GLB``: writing the reconstructed mesh as GLB (vertex colours), and ``export GLB (textured)``.

Photos are AFLW2000-3D dev images when ``--data`` exists (else the scikit-image astronaut, resized). The face box for
``reconstruct(box)`` is the detector's box found beforehand. Prints a markdown table (for the README's "Performance"
section) and optionally writes JSON. OpenMP's wait policy matters on 2 cores: the header prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def summarize(ms: Sequence[float]) -> dict[str, float]:
    """Median, p90 and count of a list of milliseconds."""
    xs = sorted(ms)
    return {"median_ms": statistics.median(xs), "p90_ms": xs[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)],
            "n": len(xs)}


def time_each(fn: Callable[[Any], object], items: Sequence[Any], warmup: int = 10) -> list[float]:
    """Milliseconds of ``fn(item)`` for each item, after ``warmup`` untimed calls on the first items."""
    for item in items[:warmup]:
        fn(item)
    out = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def load_photos(data: Path | None, n: int) -> tuple[list[np.ndarray], str]:
    """``n`` RGB photos: AFLW2000-3D dev images if available, else the astronaut resized to 450 x 450."""
    from facerecon.inference.image_io import load_image

    if data is not None and data.is_dir():
        paths = sorted(data.glob("*.jpg"))[:n]
        if paths:
            return [load_image(p) for p in paths], f"{len(paths)} photos from {data}"
    import cv2
    from skimage import data as skdata

    img = cv2.resize(skdata.astronaut(), (450, 450), interpolation=cv2.INTER_AREA)
    return [img.copy() for _ in range(n)], f"the astronaut photo (450 x 450) x {n}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1e6 if sys.platform == "darwin" else r / 1e3


def run(model_source: str | None, data: Path | None, n_images: int, threads: int, backends: Sequence[str],
        batch: int = 32, onnx_threads: int | None = None) -> dict[str, Any]:
    """Time every stage for each back-end; returns the results dict (see the module docstring)."""
    from facerecon.geometry import view_boxes
    from facerecon.hub import load_model
    from facerecon.inference.crop import crop_face
    from facerecon.inference.pipeline import Reconstructor
    from facerecon.models.facerecon import SHIFT_TEST_VIEWS

    torch.set_num_threads(threads)
    model = load_model(model_source, allow_untrained=True)
    photos, source = load_photos(data, n_images)
    size = model.config.input_size
    reference = Reconstructor(model)
    boxes, kept = [], []
    for img in photos:
        found = reference.detector(img)
        if found:
            boxes.append(found[0].as_array())
            kept.append(img)
    crops = [torch.from_numpy(crop_face(img, reference.crop_from_detection(b), size)).permute(2, 0, 1)[None]
             .float().div(255) for img, b in zip(kept, boxes, strict=True)]
    views = torch.tensor(SHIFT_TEST_VIEWS, dtype=torch.float64)
    view_crops = []
    for img, b in zip(kept, boxes, strict=True):
        vb = view_boxes(torch.as_tensor(reference.crop_from_detection(b))[None], views)[0].numpy()
        view_crops.append(torch.from_numpy(np.stack([crop_face(img, v, size) for v in vb])).permute(0, 3, 1, 2)[None]
                          .float().div(255))
    rows: list[dict[str, Any]] = []

    def add(stage: str, backend: str, ms: list[float]) -> None:
        rows.append({"stage": stage, "backend": backend, **summarize(ms)})

    tmp = Path(tempfile.mkdtemp(prefix="facerecon-latency-"))
    for backend in backends:
        rec = Reconstructor(model, backend=backend, onnx_threads=onnx_threads)
        add("forward", backend, time_each(lambda x, r=rec: r.forward(x, landmarks_only=True), crops))
        add("forward + mesh", backend, time_each(rec.forward, crops))
        xb = torch.cat([crops[i % len(crops)] for i in range(batch)])
        ms = time_each(lambda _, r=rec, x=xb: r.forward(x, landmarks_only=True), list(range(10)), warmup=2)
        rows.append({"stage": f"forward, batch {batch}", "backend": backend, **summarize(ms),
                     "faces_per_s": batch / (statistics.median(ms) / 1e3)})
        pairs = list(zip(kept, boxes, strict=True))
        add("reconstruct(box)", backend, time_each(lambda p, r=rec: r(p[0], box=p[1]), pairs))
        add("reconstruct(detect)", backend, time_each(lambda img, r=rec: r(img, max_faces=1), kept))
        flip = Reconstructor(model, backend=backend, onnx_threads=onnx_threads, flip_test=True)
        add("forward, flip test", backend, time_each(lambda x, r=flip: r.forward(x, landmarks_only=True), crops))
        add("reconstruct(detect), flip test", backend, time_each(lambda img, r=flip: r(img, max_faces=1), kept))
        shift = Reconstructor(model, backend=backend, onnx_threads=onnx_threads, flip_test=True, shift_test=True)
        add("forward, flip + shift test", backend,
            time_each(lambda x, r=shift: r.forward(x, landmarks_only=True), view_crops))
        add("reconstruct(detect), flip + shift test (default)", backend,
            time_each(lambda img, r=shift: r(img, max_faces=1), kept))
    faces = [reference(img, box=b)[0] for img, b in zip(kept[:50], boxes[:50], strict=True)]
    add("export GLB", "-", time_each(lambda f: f.export(tmp / "face.glb"), faces))
    add("export GLB (textured)", "-", time_each(lambda f: f.export(tmp / "face_tex.glb", texture=True), faces))
    return {
        "model": model_source or "bundled default", "photos": source, "photos_with_face": len(kept),
        "threads": threads, "onnx_threads": onnx_threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "rows": rows, "peak_rss_mb": peak_rss_mb(),
    }


def markdown(res: dict[str, Any]) -> str:
    """The results as a markdown table with a one-line header."""
    lines = [f"{res['photos_with_face']} photos ({res['photos']}), {res['threads']} thread(s) on {res['cores']} "
             f"cores, OMP_WAIT_POLICY={res['omp_wait_policy']}, torch {res['torch']}, peak RSS "
             f"{res['peak_rss_mb']:.0f} MB", "",
             "| stage | backend | median ms | p90 ms | faces/s |", "|---|---|---:|---:|---:|"]
    for r in res["rows"]:
        fps = f"{r['faces_per_s']:.0f}" if "faces_per_s" in r else ""
        lines.append(f"| {r['stage']} | {r['backend']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {fps} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder or repo id (default: the bundled model)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "aflw2000-3d-dev")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", nargs="+", choices=("torch", "onnx"), default=["torch", "onnx"])
    ap.add_argument("--onnx-threads", type=int, default=None, help="onnxruntime threads (default: one per core)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    res = run(args.model, args.data, args.images, args.threads, args.backend, onnx_threads=args.onnx_threads)
    print(markdown(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
