"""How good a pose teacher the pseudo-labels are: the pseudo-pose fit against AFLW2000-3D's labelled angles.

    /tmp/mp/bin/python training/pseudo_label.py --images ../shared/aflw2000-3d-dev --task $T --out /tmp/dev_mp.npz
    python benchmarks/pseudo_pose.py --labels /tmp/dev_mp.npz [--data ../shared/aflw2000-3d-dev] [--model DIR]
                                     [--eval docs/results/eval_default.json]

For every dev image MediaPipe found (and whose raw angles are within the evaluation's +/-99 degrees), the rotation of
:func:`training.losses.pseudo_rotation` (the similarity Procrustes fit of the model's mean-face landmarks to the 51
inner pseudo-label points, 2D + depth) is compared with the labelled yaw / pitch / roll: MAE, mean signed error and
the least-squares slope of the fitted angle on the label (1 = no shrinkage). With ``--eval`` the model's own per-image
pose errors from a ``training.evaluate --json`` file are averaged over the same images. Diagnosis only: nothing is
fitted to the dev split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from facerecon import DEFAULT_MODEL_DIR
    from facerecon.geometry import matrix_to_euler
    from facerecon.models.facerecon import FaceRecon
    from training.evaluate import load_aflw2000, signed_angle_difference
    from training.losses import pseudo_rotation

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True, help="training/pseudo_label.py output for the dev images")
    p.add_argument("--data", default="../shared/aflw2000-3d-dev")
    p.add_argument("--model", default=None, help="model whose mean-face landmarks are fitted (default: bundled)")
    p.add_argument("--eval", default=None, help="training.evaluate --json file of the model, for comparison")
    args = p.parse_args(argv)

    model = FaceRecon.from_pretrained(args.model or DEFAULT_MODEL_DIR).eval()
    items = {it.name: it for it in load_aflw2000(args.data)}
    labels = np.load(args.labels)
    names, fitted, truth = [], [], []
    for name, found, lmk, depth in zip(labels["names"], labels["found"], labels["landmarks"], labels["depth"],
                                       strict=True):
        it = items.get(str(name).rsplit(".", 1)[0])
        if it is None or not found or not it.pose_valid:
            continue
        lm = torch.from_numpy(np.asarray(lmk, dtype=np.float32))[None]
        d = torch.from_numpy(np.asarray(depth, dtype=np.float32))[None]
        rot = pseudo_rotation(lm, d, torch.ones_like(d), model.morphable.landmark_mean)
        fitted.append(np.degrees(matrix_to_euler(rot.double()).numpy()[0]))
        truth.append([it.yaw, it.pitch, it.roll])
        names.append(it.name)
    if not names:
        print("no dev image has a pseudo-label", file=sys.stderr)
        return 1
    fit, gt = np.array(fitted), np.array(truth)
    print(f"{len(names)} dev images with a pseudo-label (of {len(items)})")
    print("| angle | pseudo-pose MAE (deg) | mean signed error | slope on the label |")
    print("|---|---|---|---|")
    for k, angle in enumerate(("yaw", "pitch", "roll")):
        signed = signed_angle_difference(fit[:, k], gt[:, k])
        err = np.abs(signed)
        slope = np.polyfit(gt[:, k], fit[:, k], 1)[0]
        print(f"| {angle} | {err.mean():.2f} | {signed.mean():+.2f} | {slope:.2f} |")
    if args.eval:
        per_image = {r["name"]: r for r in json.loads(Path(args.eval).read_text())["aflw2000"]["per_image"]}
        same = [per_image[n] for n in names if n in per_image]
        mae = {a: np.mean([r[f"{a}_err"] for r in same]) for a in ("yaw", "pitch", "roll")}
        print(f"model ({args.eval}) on the same {len(same)} images: yaw / pitch / roll MAE "
              f"{mae['yaw']:.2f} / {mae['pitch']:.2f} / {mae['roll']:.2f} deg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
