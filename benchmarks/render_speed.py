"""Speed of the pure-PyTorch CPU renderer on the real ICT-FaceKit face mesh.

Poses the mean face frontal and at 45 deg yaw at the scale an untrained FaceRecon predicts (the 68 landmarks fill
1 / 1.6 of the image, so the mesh covers ~60% of it), renders it, and prints a markdown table of median / p90 ms.

    python benchmarks/render_speed.py --size 224 --repeats 50 --threads 2 --save face.png

On a machine whose cores are busy with other processes, OpenMP's spinning worker threads stall every parallel op;
``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts) avoids that. The header prints the load average.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

from facerecon.geometry import euler_to_matrix, model_to_camera, sh_shading, vertex_normals
from facerecon.morphable.ict import load_morphable_data
from facerecon.render import interpolate, rasterize, render, sample_image, to_screen, vertex_visibility

CROP_SCALE = 1.6


def timed(fn: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def p90(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", type=str, default=None, help="PNG path for the shaded 45-deg-yaw render")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = load_morphable_data()
    verts, faces = data.mean[None], data.faces
    lmk = data.mean[data.landmark_index]
    extent = (lmk[:, :2].amax(0) - lmk[:, :2].amin(0)).amax()
    size = args.size
    scale = (size / (CROP_SCALE * extent)).reshape(1)
    principal = torch.full((1, 2), (size - 1) / 2.0)
    albedo = torch.tensor([0.62, 0.46, 0.38]).expand(1, verts.shape[1], 3)
    light = torch.zeros(1, 9, 3)
    light[:, 0] = 0.7
    light[:, 2] = 0.35  # from the camera (+z)
    light[:, 1] = 0.15  # and from above (+y)

    rows = []
    images = []
    for yaw in (0.0, 45.0):
        rot = euler_to_matrix(torch.tensor([[math.radians(yaw), 0.0, 0.0]]))
        screen = to_screen(model_to_camera(verts, rot, torch.zeros(1, 3)), scale, principal)
        normals = vertex_normals(verts, faces) @ rot.transpose(1, 2)
        colors = albedo * sh_shading(normals, light)
        frags = rasterize(screen, faces, size, size)

        t_rast = timed(lambda s=screen: rasterize(s, faces, size, size), args.repeats)
        t_interp = timed(lambda c=colors, f=frags: interpolate(c, faces, f), args.repeats)
        t_total = timed(lambda s=screen, c=colors: render(s, faces, c, size, size), args.repeats)
        out = render(screen, faces, colors, size, size)
        t_vis = timed(lambda s=screen, f=frags, n=normals: vertex_visibility(s, faces, f, normals=n), args.repeats)
        t_samp = timed(lambda s=screen, im=out.image: sample_image(im, s[..., :2]), args.repeats)
        images.append(out.image)
        cover = frags.mask.float().mean().item()
        vis = vertex_visibility(screen, faces, frags, normals=normals).float().mean().item()
        for name, ts in (("rasterize", t_rast), ("interpolate", t_interp), ("render (total)", t_total),
                         ("vertex_visibility", t_vis), ("sample_image", t_samp)):
            rows.append((f"{yaw:.0f}", name, statistics.median(ts), p90(ts)))
        print(f"yaw {yaw:.0f}: mesh covers {100 * cover:.1f}% of the image, {100 * vis:.1f}% of vertices visible")

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{size}x{size}, {verts.shape[1]} vertices, {faces.shape[0]} triangles, torch {torch.__version__}, "
          f"{args.threads} thread(s) on {os.cpu_count()} cores, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average {load}, {args.repeats} repeats\n")
    print("| yaw | stage | median ms | p90 ms |")
    print("|---|---|---|---|")
    for yaw, name, med, q90 in rows:
        print(f"| {yaw} | {name} | {med:.2f} | {q90:.2f} |")

    if args.save:
        import cv2

        strip = torch.cat(images, dim=3)[0].clamp(0, 1)
        rgb = (strip.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        cv2.imwrite(args.save, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        print(f"\nsaved {args.save} (frontal | 45 deg yaw)")


if __name__ == "__main__":
    main()
