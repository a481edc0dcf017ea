"""What the orientation test's rule costs and gains in NME on the training side's validation split.

:mod:`benchmarks.orientation_probe` counts turns; this script scores them. Every validation crop is regressed with
the flip + shift test turned by 0, 1, 2 and 3 quarter turns (``FaceRecon.forward(turns=...)``), giving its NME
under each turn, and its single-pass flip disagreement under each turn (what the rule sees). For each rule it then
reports how many crops it turns, how many of those it makes worse / better by more than 0.05 NME, and the mean
NME, next to no test and the best turn per crop (an oracle)::

    python benchmarks/orientation_rule.py --config training/configs/finetune_v13.yaml \
        --model facerecon/pretrained/facerecon-default --threads 2 [--json OUT]

The AFLW2000-3D dev split is not used. About four own-validation passes with the flip + shift test (8 minutes on
2 cores).
"""

from __future__ import annotations

import json
import sys

import torch


def turn_nme(model, records: list, batch: int = 128) -> torch.Tensor:
    """(N, 4) NME of each validation crop regressed turned by 0-3 quarter turns (flip + shift test)."""
    from own_val import ViewStack, view_records  # benchmarks/ (the script's folder) is on sys.path

    from training.data import RealFaceDataset, extend_landmarks
    from training.evaluate import test_views
    from training.train import nme

    views = test_views(True)
    scale, size = model.config.crop_scale, model.config.input_size
    val = ViewStack([RealFaceDataset(recs, size=size, augment=False, split="val", crop_scale=scale * float(v[0]))
                     for recs, v in zip(view_records(records, views, scale), views, strict=True)])
    loader = torch.utils.data.DataLoader(val, batch_size=batch, shuffle=False)
    columns = []
    with torch.inference_mode():
        for k in range(4):
            errs = []
            for b in loader:
                turns = torch.full((b["image"].shape[0],), k, dtype=torch.long)
                out = model(b["image"], landmarks_only=True, flip_test=True, views=views, turns=turns)
                w = b["weights"].clone()
                w[:, 68:] = 0  # the 68 iBUG points, as training.train.evaluate
                errs.append(nme(extend_landmarks(out.landmarks_2d.float()), b["landmarks"], w))
            columns.append(torch.cat(errs))
    return torch.stack(columns, -1)


def main(argv: list[str] | None = None) -> int:
    from orientation_probe import disagreements, setup

    from facerecon.models.facerecon import orientation_turns

    args, model, records, crops = setup(argv, __doc__)
    d = disagreements(model, crops)
    e = turn_nme(model, records)
    print(f"{len(e)} validation crops; NME without the test {e[:, 0].mean():.5f}, best turn per crop (oracle) "
          f"{e.min(-1).values.mean():.5f}")
    print("| gate | ratio | turned crop below the gate | crops turned | worse / better by > 0.05 | NME |")
    print("|---|---|---|---|---|---|")
    rows = []
    for gate in (0.02, 0.03, 0.04, 0.05):
        for ratio in (0.3, 0.4, 0.5, 0.6):
            for bounded in (True, False):
                k = orientation_turns(d, gate, ratio, bounded=bounded)
                err = e.gather(1, k[:, None])[:, 0]
                turned = k != 0
                worse = int((turned & (err > e[:, 0] + 0.05)).sum())
                better = int((turned & (err < e[:, 0] - 0.05)).sum())
                rows.append({"gate": gate, "ratio": ratio, "bounded": bounded, "turned": int(turned.sum()),
                             "worse": worse, "better": better, "nme": float(err.mean())})
                print(f"| {gate} | {ratio} | {'yes' if bounded else 'no'} | {int(turned.sum())} | {worse} / {better} "
                      f"| {float(err.mean()):.5f} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "n": len(e), "no_test": float(e[:, 0].mean()),
                                         "oracle": float(e.min(-1).values.mean()), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
