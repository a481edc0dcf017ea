"""The training-side validation NME of one or more models, measured exactly as ``training/train.py`` logs it.

    python benchmarks/own_val.py --config training/configs/finetune_v13.yaml \
        --model facerecon/pretrained/facerecon-default --model runs/v17/final [--flip-test] \
        [--crop-multiplier 0.93 --crop-multiplier 1.0] [--json OUT]

This is the number default-model candidates are chosen by (the AFLW2000-3D dev split only validates): the 68-point
NME on the manual labels of the deterministic 70/15/15 split's validation part (``training.train.build_datasets``
with the config's sources and pseudo-label settings; pseudo-labels never enter validation), per face normalised by
the visible labels' box. Each model sees crops at its own input size and crop scale. The NME is given with the
model's own landmark definition and, when the config sets ``source_landmarks``, with those per-source definitions
too; per source as well. Cross-measures like "model A under config B's definitions" come from one command.

``--shift-test`` also averages the crops shifted by 7 % of their side in four directions
(:data:`facerecon.models.facerecon.SHIFT_TEST_VIEWS`), as ``training.evaluate --shift-test`` and the app do.

``--crop-multiplier M`` (repeatable) feeds each model crops M times its own crop scale (M < 1: tighter, the face
fills more of the input), with the same labels and normalisation: the probe that says whether a model would gain
from fine-tuning at another crop scale.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


class ViewStack(torch.utils.data.Dataset):
    """Samples of several datasets over the same faces, their images stacked: (V, 3, S, S), the rest of view 0's."""

    def __init__(self, views: list[Any]) -> None:
        if len({len(v) for v in views}) != 1:
            raise ValueError(f"view datasets differ in length: {[len(v) for v in views]}")
        self.views = views

    def __len__(self) -> int:
        return len(self.views[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        items = [v[index] for v in self.views]
        return {**items[0], "image": torch.stack([it["image"] for it in items])}


def view_records(records: list, views: torch.Tensor, crop_scale: float) -> list[list]:
    """Per view ``(m, dx, dy)``, the records with their boxes shifted by ``(dx, dy)`` of the model's crop side.

    A dataset at crop scale ``m * crop_scale`` then cuts exactly :func:`facerecon.geometry.view_boxes` of the model's
    crop (the dataset scales each box about its centre by ``crop_scale / CANONICAL_CROP_SCALE``).
    """
    import dataclasses

    from facerecon.geometry import view_boxes
    from training.data import CANONICAL_CROP_SCALE

    boxes = torch.from_numpy(np.stack([r.box for r in records]))
    f = crop_scale / CANONICAL_CROP_SCALE
    shifts = torch.cat([torch.ones(len(views), 1, dtype=torch.float64), views[:, 1:].double() * f], 1)
    vb = view_boxes(boxes, shifts).numpy()
    return [[dataclasses.replace(r, box=vb[i, k]) for i, r in enumerate(records)] for k in range(len(views))]


def own_validation(model: Any, config: Any, batch_size: int = 128, flip_test: bool = False,
                   crop_multiplier: float = 1.0, records: list | None = None,
                   shift_test: bool = False, orientation_test: bool = False) -> dict[str, dict[str, float]]:
    """Validation metrics of ``model`` (:func:`training.train.evaluate`) with its definition and the config's.

    Args:
        model: a :class:`~facerecon.models.facerecon.FaceRecon` (set to eval mode here).
        config: the :class:`~training.config.TrainConfig` whose split, sources and ``source_landmarks`` are used.
        batch_size: validation batch size (no effect on the numbers).
        flip_test: average each crop's prediction with its mirror image's.
        crop_multiplier: crops are cut at ``crop_multiplier x model.config.crop_scale`` (1: the model's own crop).
        records: the validation records of ``config`` (:func:`validation_records`) when already built; they keep the
            canonical boxes, so one list serves every model and crop scale.
        shift_test: also average the views of :data:`facerecon.models.facerecon.SHIFT_TEST_VIEWS`.
        orientation_test: regress faces lying on their side turned upright (:meth:`FaceRecon.crop_orientation`).

    Returns:
        ``{"model_definition": metrics}`` plus ``"source_definitions"`` when the config sets ``source_landmarks``.
    """
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from training.data import RealFaceDataset, extend_landmarks
    from training.evaluate import test_views
    from training.train import evaluate, source_definitions

    if not crop_multiplier > 0:
        raise ValueError(f"crop_multiplier must be > 0, got {crop_multiplier}")
    records = validation_records(config) if records is None else records
    crop_scale = model.config.crop_scale * crop_multiplier
    views = test_views(shift_test)
    if views is None:
        val = RealFaceDataset(records, size=model.config.input_size, augment=False, split="val", crop_scale=crop_scale)
    else:
        val = ViewStack([RealFaceDataset(recs, size=model.config.input_size, augment=False, split="val",
                                         crop_scale=crop_scale * float(v[0]))
                         for recs, v in zip(view_records(records, views, crop_scale), views, strict=True)])
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    loader = DataLoader(val, batch_size=batch_size, shuffle=False, num_workers=0)
    model = model.to(accelerator.device)
    loader = accelerator.prepare(loader)
    results = {"model_definition": evaluate(model, loader, accelerator, extend_landmarks, flip_test=flip_test,
                                            views=views, orientation_test=orientation_test)}
    if config.source_landmarks:
        defs = {k: v.to(accelerator.device) for k, v in source_definitions(config, model).items()}
        results["source_definitions"] = evaluate(model, loader, accelerator, extend_landmarks, defs,
                                                 flip_test=flip_test, views=views,
                                                 orientation_test=orientation_test)
    return results


def validation_records(config: Any) -> list:
    """The validation records of ``config``'s split, as :func:`training.train.build_datasets` selects them."""
    from training.train import validation_records as split_validation_records

    return split_validation_records(config)


def main(argv: list[str] | None = None) -> int:
    from facerecon.models.facerecon import FaceRecon
    from training.config import load_config
    from training.train import format_validation

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config YAML whose validation split is measured")
    p.add_argument("--model", action="append", required=True, help="model folder or Hub id (repeatable)")
    p.add_argument("--flip-test", action="store_true", help="average each crop's prediction with its mirror image's")
    p.add_argument("--shift-test", action="store_true",
                   help="also average the crops shifted by 7%% of their side in four directions")
    p.add_argument("--orientation-test", action="store_true",
                   help="regress faces lying on their side turned upright (FaceRecon.crop_orientation)")
    p.add_argument("--crop-multiplier", type=float, action="append", default=None,
                   help="feed crops this many times the model's own crop scale (repeatable; default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None,
                   help="also write the results here: {config, flip_test, models: {model: {multiplier: results}}}")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    config = load_config(args.config, [])
    multipliers = args.crop_multiplier or [1.0]
    records = validation_records(config)
    all_results: dict[str, dict[str, Any]] = {}
    for name in args.model:
        model = FaceRecon.from_pretrained(name).eval()
        for mult in multipliers:
            res = own_validation(model, config, flip_test=args.flip_test, crop_multiplier=mult, records=records,
                                 shift_test=args.shift_test, orientation_test=args.orientation_test)
            all_results.setdefault(name, {})[f"{mult:g}"] = res
            for kind, m in res.items():
                tags = ([kind] + (["flip test"] if args.flip_test else []) + (["shift test"] if args.shift_test else [])
                        + (["orientation test"] if args.orientation_test else [])
                        + ([f"crop x{mult:g}"] if mult != 1 else []))
                sys.stdout.write(f"{name} [{', '.join(tags)}]: {format_validation(m, digits=5)}\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "flip_test": args.flip_test,
                                               "shift_test": args.shift_test,
                                               "orientation_test": args.orientation_test,
                                               "models": all_results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
