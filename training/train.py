"""Train FaceRecon: ``accelerate launch training/train.py --config training/configs/NAME.yaml [flags]``.

The script owns no model code: it builds :class:`facerecon.FaceRecon`, the datasets of :mod:`training.data`, the
losses of :mod:`training.losses`, and runs the loop with :class:`accelerate.Accelerator` (CPU, one or many GPUs,
several machines, mixed precision), with checkpoints (``save_state`` / ``--resume``), TensorBoard logging,
validation NME, early stopping and ``save_pretrained`` of the best model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from facerecon.config import CANONICAL_CROP_SCALE
from training.config import TrainConfig, add_config_arguments, load_config

logger = logging.getLogger("facerecon.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (they override the YAML file)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--output-dir", default=None, help="run folder (overrides output_dir)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimisation steps (overrides max_steps)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (overrides batch_size)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (overrides lr)")
    parser.add_argument("--init-from", default=None, help="fine-tune from a saved model folder or repo id")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None)
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="resume from a checkpoint folder, or 'latest' in output_dir/checkpoints")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="push the best model to this Hub repo")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge YAML, ``--set`` overrides and explicit flags (flags win)."""
    overrides = list(args.overrides)
    for flag, key in (("output_dir", "output_dir"), ("max_steps", "max_steps"), ("batch_size", "batch_size"),
                      ("lr", "lr"), ("init_from", "init_from"), ("mixed_precision", "mixed_precision"),
                      ("push_to_hub", "push_to_hub")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(args.config, overrides)


def lr_lambda(cfg: TrainConfig):
    """Multiplier of the base learning rate at each step: linear warm-up, then cosine (or cyclic cosine)."""

    def fn(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        t = step - cfg.warmup_steps
        if cfg.schedule == "cyclic":
            t = t % max(1, cfg.cycle_steps)
            period = max(1, cfg.cycle_steps)
        else:
            period = max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(t, period) / period))

    return fn


def build_model(cfg: TrainConfig):
    """The model to train: fresh from ``cfg.model`` or fine-tuned from ``cfg.init_from``."""
    from facerecon.models.facerecon import FaceRecon

    if cfg.init_from:
        model = FaceRecon.from_pretrained(cfg.init_from, strict=True)
        if not cfg.model:
            return model
        # Entries of ``model`` override the loaded config (e.g. another landmark definition); weights must still fit.
        tuned = FaceRecon({**model.config.to_dict(), **cfg.model})
        tuned.load_state_dict(model.state_dict(), strict=True)
        return tuned
    return FaceRecon(cfg.model_config())


def build_datasets(cfg: TrainConfig, input_size: int, crop_scale: float = CANONICAL_CROP_SCALE) -> tuple[Any, Any]:
    """Training and validation datasets from the deterministic 70/15/15 split of the real pool.

    Args:
        cfg: training config (sources, pseudo-labels, profiled faces, augmentation, seed).
        input_size: crop side in pixels (the model's ``input_size``).
        crop_scale: the model's ``crop_scale`` (crop side over face side).
    """
    from training.augment import Augmenter
    from training.data import RealFaceDataset

    splits = weighted_splits(cfg)
    if cfg.pseudo_sources:
        splits["train"] = with_pseudo_labels(splits["train"], cfg)
    if cfg.profiled:
        from training.profile_faces import default_profiled_dir, load_profiled

        folder = default_profiled_dir() if cfg.profiled == "default" else Path(cfg.profiled).expanduser()
        profiled = load_profiled(folder, allowed_origins={r.key for r in splits["train"]})
        logger.info("profiled faces: %d turned views from %s", len(profiled), folder)
        splits["train"] = splits["train"] + profiled
    augment = Augmenter(input_size, cfg.augment_config(), crop_scale=crop_scale) if cfg.augment else False
    train = RealFaceDataset(splits["train"], size=input_size, augment=augment, split="train", seed=cfg.seed,
                            crop_scale=crop_scale)
    val = RealFaceDataset(select_validation(splits["val"], cfg), size=input_size, augment=False, split="val",
                          crop_scale=crop_scale)
    return train, val


def weighted_splits(cfg: TrainConfig) -> dict[str, list]:
    """The deterministic 70/15/15 split of ``cfg.sources`` with the turned-jaw reweighting applied to every part."""
    from training.data import format_split_sizes, make_splits, reweight_turned_jaw

    splits = make_splits(seed=0, sources=cfg.sources)
    logger.info("data splits:\n%s", format_split_sizes(splits))
    return {k: reweight_turned_jaw(v, cfg.jaw_turned_weight, cfg.jaw_turned_side, cfg.jaw_turned_min_yaw)
            for k, v in splits.items()}


def select_validation(records: list, cfg: TrainConfig) -> list:
    """The validation part's manually labelled records, thinned evenly to ``cfg.val_limit`` when it is set."""
    out = [r for r in records if r.has_landmarks]
    if cfg.val_limit:
        out = out[:: max(1, len(out) // cfg.val_limit)][: cfg.val_limit]
    return out


def validation_records(cfg: TrainConfig) -> list:
    """The records of :func:`build_datasets`' validation set, without building the training set or its labels."""
    return select_validation(weighted_splits(cfg)["val"], cfg)


def with_pseudo_labels(records: list, cfg: TrainConfig) -> list:
    """Training records with the pseudo-labels of ``cfg.pseudo_sources`` added (validation stays manual-only)."""
    from training.data import add_pseudo_labels, default_pseudo_label_path, load_pseudo_labels

    out = list(records)
    for source in cfg.pseudo_sources:
        path = default_pseudo_label_path(source, cfg.pseudo_dir)
        labels = load_pseudo_labels(path, cfg.pseudo_map)
        idx = [i for i, r in enumerate(out) if r.source == source]
        updated, stats = add_pseudo_labels([out[i] for i in idx], labels, cfg.pseudo_weight, cfg.pseudo_max_nme,
                                           jaw_max_yaw=cfg.pseudo_jaw_max_yaw, jaw_depth=cfg.pseudo_jaw_depth)
        for i, r in zip(idx, updated, strict=True):
            out[i] = r
        logger.info("pseudo-labels %s (%s): %s", source, path, stats)
    return out


class EpochSampler(torch.utils.data.Sampler[int]):
    """A seeded permutation per epoch (``set_epoch``), so resumed runs see exactly the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def nme(pred71: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample NME: mean visible-point error / sqrt(w * h) of the visible targets' bounding box.

    Args:
        pred71: (B, 71, 2) predicted landmarks.
        target: (B, 71, 2) target landmarks.
        weights: (B, 71) target weights (> 0 = visible).

    Returns:
        (B,) normalised mean errors (NaN-free; samples without points give 0).
    """
    from training.losses import visible_box_size

    vis = weights > 0
    t = torch.where(vis[..., None], target, torch.zeros_like(target))
    size = visible_box_size(target, weights)
    err = ((pred71 - t).norm(dim=-1) * vis).sum(1) / vis.sum(1).clamp_min(1)
    return torch.where(vis.any(1), err / size, torch.zeros_like(err))


def source_definitions(cfg: TrainConfig, model) -> dict[int, torch.Tensor]:
    """``cfg.source_landmarks`` loaded and checked against the model's mesh: source id -> (68,) vertex indices."""
    from facerecon.morphable.landmarks import load_landmark_index
    from training.data import SOURCE_IDS

    m = model.morphable
    out = {}
    for source, name in cfg.source_landmarks.items():
        index = load_landmark_index(name, model.config.surface, m.faces, m.n_vertices)
        if index is None:
            raise ValueError(f"source_landmarks[{source!r}] = {name!r} is ICT-FaceKit's own definition; give a fitted "
                             "one (a name in facerecon/assets/landmarks or a JSON path)")
        out[SOURCE_IDS[source]] = index.to(m.landmark_index.device)
    return out


def evaluate(model, loader: DataLoader, accelerator, extend,
             definitions: dict[int, torch.Tensor] | None = None, flip_test: bool = False,
             views: torch.Tensor | None = None, orientation_test: bool = False) -> dict[str, float]:
    """Validation NME (68-point layout restricted to the visible targets), gathered over processes.

    With ``definitions`` (:func:`source_definitions`) those sources' annotations are compared with their own
    landmark vertices (:func:`training.losses.source_landmarks_2d`). ``flip_test`` averages each crop's prediction with
    its mirror image's (:meth:`FaceRecon.forward`); with (V, 3) ``views`` the loader's images are (B, V, 3, S, S)
    crops of those views (``benchmarks/own_val.py --shift-test``); ``orientation_test`` regresses faces lying on
    their side turned upright (:meth:`FaceRecon.crop_orientation`).

    Returns:
        ``{"nme": mean over faces, "n": faces, "nme/<source>": mean over that source's faces, ...}``, plus
        ``"yaw_mae"`` (degrees) and ``"n_yaw"`` when some faces carry a yaw label (AFLW): the mean absolute error of
        the predicted yaw (:func:`facerecon.geometry.matrix_to_euler`) against the label clamped to
        +-:data:`training.losses.YAW_LABEL_MAX_DEG`, as :func:`training.losses.yaw_loss` compares them.
    """
    from facerecon.geometry import matrix_to_euler
    from training.data import SOURCE_IDS
    from training.losses import YAW_LABEL_MAX_DEG, source_landmarks_2d

    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    errs, sources, yaw_errs = [], [], []
    with torch.no_grad():
        for batch in loader:
            out = model(batch["image"], landmarks_only=True, flip_test=flip_test, views=views,
                        orientation_test=orientation_test)
            pred = source_landmarks_2d(unwrapped, out, batch["source"], definitions or {})
            # Only the 68 iBUG points count for NME (the virtual centres are training aids).
            w = batch["weights"].clone()
            w[:, 68:] = 0
            e = nme(extend(pred.float()), batch["landmarks"], w)
            errs.append(accelerator.gather_for_metrics(e))
            sources.append(accelerator.gather_for_metrics(batch["source"]))
            if "yaw" in batch:  # NaN where a face has no yaw label; gathered whole so every process takes part
                yaw = torch.rad2deg(matrix_to_euler(out.params.rotation.float())[:, 0])
                label = batch["yaw"].float().clamp(-YAW_LABEL_MAX_DEG, YAW_LABEL_MAX_DEG)
                yaw_errs.append(accelerator.gather_for_metrics((yaw - label).abs()))
    model.train()
    all_err = torch.cat(errs) if errs else torch.zeros(0)
    all_src = torch.cat(sources) if sources else torch.zeros(0, dtype=torch.long)
    metrics = {"nme": float(all_err.mean()) if len(all_err) else float("nan"), "n": int(len(all_err))}
    all_yaw = torch.cat(yaw_errs) if yaw_errs else torch.zeros(0)
    all_yaw = all_yaw[torch.isfinite(all_yaw)]
    if len(all_yaw):
        metrics["yaw_mae"], metrics["n_yaw"] = float(all_yaw.mean()), int(len(all_yaw))
    for name, sid in SOURCE_IDS.items():
        if (all_src == sid).any():
            metrics[f"nme/{name}"] = float(all_err[all_src == sid].mean())
    return metrics


def tracker_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """:func:`evaluate`'s metrics for the experiment trackers: ``val/<name>`` for every error, without the counts."""
    return {f"val/{k}": float(v) for k, v in metrics.items() if k not in ("n", "n_yaw")}


def format_validation(metrics: dict[str, float], digits: int = 4) -> str:
    """One log line for :func:`evaluate`'s metrics.

    For example ``val NME 0.0599 on 1732 faces (300w 0.0390, aflw 0.0631), yaw MAE 7.97 deg on 1502 labelled faces``;
    the yaw part only when some faces carry a yaw label.
    """
    per_source = ", ".join(f"{k[4:]} {v:.{digits}f}" for k, v in metrics.items() if k.startswith("nme/"))
    line = f"val NME {metrics['nme']:.{digits}f} on {metrics['n']} faces ({per_source})"
    if "yaw_mae" in metrics:
        line += f", yaw MAE {metrics['yaw_mae']:.2f} deg on {metrics['n_yaw']} labelled faces"
    return line


def train(cfg: TrainConfig, resume: str | None = None, return_model: bool = False) -> dict[str, Any]:
    """Run training.

    Args:
        cfg: training options.
        resume: checkpoint folder, or "latest" (in ``output_dir/checkpoints``), or None.
        return_model: also return the trained (unwrapped) model under the key "model".

    Returns:
        A summary: best validation NME, steps, validation history, per-step training losses, throughput.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from training.data import extend_landmarks
    from training.losses import source_landmarks_2d, total_loss

    out_dir = Path(cfg.output_dir)
    # Parameters that no active loss reaches (albedo / lighting heads without a photometric loss) need DDP's
    # unused-parameter search.
    photometric = cfg.loss.photometric > 0 or cfg.loss.perceptual > 0
    needs_mesh = photometric or (cfg.loss.recon > 0 and cfg.synthetic_fraction > 0)
    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=not photometric)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs"),
                                            automatic_checkpoint_naming=False),
        kwargs_handlers=[ddp_kwargs],
    )
    if accelerator.device.type == "cpu":
        # `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, which halves CPU training speed.
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // accelerator.num_processes)
        torch.set_num_threads(threads)
        logger.info("CPU training with %d threads per process", threads)
    set_seed(cfg.seed, device_specific=True)
    model = build_model(cfg)
    size = model.config.input_size
    train_set, val_set = build_datasets(cfg, size, model.config.crop_scale)
    per_device = max(1, cfg.batch_size // (accelerator.num_processes * cfg.grad_accum))
    n_synthetic = round(per_device * cfg.synthetic_fraction)
    if n_synthetic == per_device and cfg.synthetic_fraction < 1:
        n_synthetic -= 1
    synthetic = None
    if n_synthetic:
        from training.synthetic import SyntheticFaces

        synthetic = SyntheticFaces(model, seed=cfg.seed, pitch_std=cfg.synthetic_pitch_std,
                                   yaw_min=cfg.synthetic_min_yaw)
    # Workers are not persistent so that set_epoch reaches them.
    train_loader = DataLoader(train_set, batch_size=max(1, per_device - n_synthetic),
                              sampler=EpochSampler(len(train_set), cfg.seed), drop_last=True, num_workers=cfg.workers)
    val_loader = DataLoader(val_set, batch_size=per_device, shuffle=False, num_workers=cfg.workers)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)

    unwrapped = accelerator.unwrap_model(model)
    definitions = source_definitions(cfg, unwrapped)
    perceptual = None
    if cfg.loss.perceptual > 0:
        from training.perceptual import PerceptualLoss

        perceptual = PerceptualLoss(cfg.loss.perceptual_network).to(accelerator.device)
    ckpt_dir = out_dir / "checkpoints"
    state_file = out_dir / "train_state.json"
    step, best, bad_evals, epoch, skip = 0, float("inf"), 0, 0, 0
    if resume:
        path = _latest_checkpoint(ckpt_dir) if resume == "latest" else Path(resume)
        if path is None:
            raise FileNotFoundError(f"no checkpoint to resume from in {ckpt_dir}")
        accelerator.load_state(str(path))
        meta = json.loads((path / "meta.json").read_text())
        step, best, bad_evals, epoch, skip = (meta["step"], meta["best"], meta["bad_evals"], meta["epoch"],
                                              meta["batches_in_epoch"])
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, step, epoch, skip)

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    accelerator.init_trackers("facerecon", config=_flat_hparams(cfg))
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train",
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    t0, seen = time.time(), 0
    history: list[dict[str, float]] = []
    train_losses: dict[int, float] = {}
    stop = False
    while step < cfg.max_steps and epoch < cfg.epochs and not stop:
        train_set.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        batches = skip
        skip = 0
        for batch in loader:
            batches += 1
            if synthetic is not None:
                from training.synthetic import mix_batches

                index = (epoch * 1_000_003 + batches) * accelerator.num_processes + accelerator.process_index
                synth = synthetic.batch(n_synthetic, index=index)
                batch = mix_batches({k: v.cpu() for k, v in batch.items() if torch.is_tensor(v)}, synth)
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.accumulate(model):
                out = model(batch["image"], landmarks_only=not needs_mesh)
                loss, parts = total_loss(out, batch, cfg.loss, size, extend_landmarks, model=unwrapped,
                                         perceptual=perceptual,
                                         landmarks_2d=source_landmarks_2d(unwrapped, out, batch["source"], definitions))
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            seen += batch["image"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += 1
            train_losses[step] = float(accelerator.reduce(parts["total"], reduction="mean"))
            bar.update(1)
            if step % cfg.log_every == 0:
                logs = {f"train/{k}": float(v) for k, v in parts.items()}
                logs["train/lr"] = scheduler.get_last_lr()[0]
                logs["train/images_per_s"] = seen / max(time.time() - t0, 1e-6)
                accelerator.log(logs, step=step)
                bar.set_postfix(loss=f"{float(parts['total']):.4f}", lmk=f"{float(parts['landmark']):.4f}")
            epoch_end = not cfg.val_every and batches == len(train_loader)
            if (cfg.val_every and step % cfg.val_every == 0) or epoch_end or step == cfg.max_steps:
                metrics = evaluate(model, val_loader, accelerator, extend_landmarks, definitions)
                accelerator.log(tracker_metrics(metrics), step=step)
                history.append({"step": step, "val_nme": metrics["nme"]})
                logger.info("step %d: %s", step, format_validation(metrics))
                if metrics["nme"] < best:
                    best, bad_evals = metrics["nme"], 0
                    _save_best(accelerator, model, out_dir / "best", cfg, step, metrics)
                else:
                    bad_evals += 1
                    if cfg.patience and bad_evals >= cfg.patience:
                        logger.info("early stopping: no improvement in %d validations", bad_evals)
                        stop = True
            if step % cfg.save_every == 0 or stop or step == cfg.max_steps:
                meta = {"step": step, "best": best, "bad_evals": bad_evals, "epoch": epoch,
                        "batches_in_epoch": batches}
                _checkpoint(accelerator, ckpt_dir / f"step_{step:07d}", meta)
            if stop or step >= cfg.max_steps:
                break
        else:
            epoch += 1
    bar.close()
    last_val = history[-1]["val_nme"] if history else float("nan")
    # The weights at the end of the schedule (the own validation split is not the benchmark: see `publish`).
    _save_best(accelerator, model, out_dir / "final", cfg, step, {"nme": last_val})
    summary = {"best_val_nme": best, "final_val_nme": last_val, "steps": step, "best_dir": str(out_dir / "best"),
               "final_dir": str(out_dir / "final"), "history": history, "train_losses": train_losses,
               "images_per_s": seen / max(time.time() - t0, 1e-6)}
    if accelerator.is_main_process:
        state_file.write_text(json.dumps(summary, indent=1))
        publish = out_dir / cfg.publish
        if cfg.push_to_hub and publish.is_dir():
            from facerecon.models.facerecon import FaceRecon

            FaceRecon.from_pretrained(publish, strict=True).push_to_hub(cfg.push_to_hub)
    accelerator.end_training()
    if return_model:
        summary["model"] = accelerator.unwrap_model(model)
    return summary


def _flat_hparams(cfg: TrainConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, int | float | str | bool)})
        elif isinstance(v, int | float | str | bool):
            flat[k] = v
    return flat


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(p for p in ckpt_dir.glob("step_*") if (p / "meta.json").is_file())
    return found[-1] if found else None


def _checkpoint(accelerator, path: Path, meta: dict[str, Any], keep: int = 2) -> None:
    """``save_state`` plus the loop counters; keeps the newest ``keep`` checkpoints."""
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "meta.json").write_text(json.dumps(meta))
        old = sorted(p for p in path.parent.glob("step_*") if p != path)
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_best(accelerator, model, path: Path, cfg: TrainConfig, step: int, metrics: dict[str, float]) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(path)
        (path / "training.json").write_text(json.dumps({"step": step, "val": metrics, "config": cfg.to_dict()},
                                                       indent=1))
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg = config_from_args(args)
    return train(cfg, resume=args.resume)


if __name__ == "__main__":
    main()
