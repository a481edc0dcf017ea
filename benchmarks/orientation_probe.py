"""How well the flip disagreement tells upright face crops from turned ones (the orientation test's rule).

On the training side's validation split (manual labels, protocol crops), every crop is also fed turned by 1, 2 and 3
quarter turns, and for each (gate, ratio) pair the script counts how many upright crops the rule of
:meth:`facerecon.models.facerecon.FaceRecon.crop_orientation` would turn (false turns) and how many turned crops it
brings back upright::

    python benchmarks/orientation_probe.py --config training/configs/finetune_v13.yaml \
        --model facerecon/pretrained/facerecon-default --threads 2

Single-pass predictions, as the rule sees them. The AFLW2000-3D dev split is not used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch


def disagreements(model, crops: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """(N, 4) flip disagreement of each crop turned by 0-3 quarter turns (single pass)."""
    regress = model.regressor()
    out = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch):
            x = crops[i:i + batch]
            row = []
            for k in range(4):
                t = torch.rot90(x, k, dims=(-2, -1))
                p, _ = regress(torch.cat([t, t.flip(-1)]))
                n = t.shape[0]
                row.append(model.flip_disagreement(p[:n], p[n:]))
            out.append(torch.stack(row, -1))
    return torch.cat(out)


def setup(argv: list[str] | None, description: str) -> tuple[argparse.Namespace, Any, list, torch.Tensor]:
    """Parse the probe scripts' arguments; load the model, the config's validation records and their crops."""
    from facerecon.models.facerecon import FaceRecon
    from training.config import load_config
    from training.data import RealFaceDataset
    from training.train import validation_records

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config whose validation split is used")
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = FaceRecon.from_pretrained(args.model).eval()
    records = validation_records(load_config(args.config))
    ds = RealFaceDataset(records, size=model.config.input_size, augment=False, crop_scale=model.config.crop_scale)
    return args, model, records, torch.stack([ds[i]["image"] for i in range(len(ds))])


def main(argv: list[str] | None = None) -> int:
    from facerecon.models.facerecon import orientation_turns

    args, model, _, crops = setup(argv, __doc__)
    d = disagreements(model, crops)
    # A crop given turned by j quarter turns has disagreement d[:, (i + j) % 4] when turned by i more.
    given = {j: d[:, [(i + j) % 4 for i in range(4)]] for j in range(4)}
    print(f"{len(crops)} validation crops; upright flip disagreement median {d[:, 0].median():.4f}, "
          f"90th percentile {d[:, 0].quantile(0.9):.4f}; turned by 1 / 2 / 3: "
          + " / ".join(f"{d[:, j].median():.4f}" for j in (1, 2, 3)))
    rows = []
    print("| gate | ratio | upright crops turned | turned crops recovered (1 / 2 / 3 quarter turns) | checked |")
    print("|---|---|---|---|---|")
    for gate in (0.02, 0.03, 0.04, 0.05):
        for ratio in (0.3, 0.4, 0.5, 0.6, 0.7):
            false = int((orientation_turns(given[0], gate, ratio) != 0).sum())
            rec = [float((orientation_turns(given[j], gate, ratio) == (4 - j) % 4).float().mean()) for j in (1, 2, 3)]
            checked = float((given[0][:, 0] > gate).float().mean())
            rows.append({"gate": gate, "ratio": ratio, "false_turns": false, "recovered": rec, "checked": checked})
            print(f"| {gate} | {ratio} | {false} | {' / '.join(f'{r:.3f}' for r in rec)} | {checked:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "n": len(crops), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
