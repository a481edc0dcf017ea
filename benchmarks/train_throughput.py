"""Training throughput on CPU for a training config: images per second of full optimisation steps.

    python benchmarks/train_throughput.py [--config training/configs/default.yaml] [--steps 10] [--threads 2]

Each step is exactly the training step of ``training/train.py`` (augmented real crops from the data loader, the
configured synthetic share rendered on the fly, forward, the configured losses, backward, gradient clipping, Adam),
timed after two warm-up steps. Without ``../shared`` data, random images are used (and the table says so).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="training/configs/default.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from facerecon.models.facerecon import FaceRecon
    from training.config import load_config
    from training.data import RealFaceDataset, extend_landmarks, make_splits
    from training.losses import total_loss

    cfg = load_config(args.config, [f"batch_size={args.batch_size}"] if args.batch_size else [])
    model = FaceRecon(cfg.model_config()).train()
    size = model.config.input_size
    n_syn = round(cfg.batch_size * cfg.synthetic_fraction)
    n_real = cfg.batch_size - n_syn
    try:
        ds = RealFaceDataset(make_splits(seed=0, sources=cfg.sources)["train"], size=size, augment=cfg.augment)
        loader = iter(torch.utils.data.DataLoader(ds, batch_size=n_real, shuffle=True, num_workers=cfg.workers,
                                                  drop_last=True))
        data = "real"
    except FileNotFoundError:
        loader, data = None, "random (no ../shared data)"
    synthetic = None
    if n_syn:
        from training.synthetic import SyntheticFaces, mix_batches

        synthetic = SyntheticFaces(model, seed=0)
    perceptual = None
    if cfg.loss.perceptual > 0:
        from training.perceptual import PerceptualLoss

        perceptual = PerceptualLoss(cfg.loss.perceptual_network)
    needs_mesh = cfg.loss.photometric > 0 or cfg.loss.perceptual > 0 or n_syn > 0
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    times = []
    for step in range(args.steps + 2):
        t0 = time.perf_counter()
        if loader is not None:
            batch = next(loader)
        else:
            batch = {"image": torch.rand(n_real, 3, size, size), "landmarks": torch.rand(n_real, 71, 2) * size,
                     "weights": torch.ones(n_real, 71)}
        if synthetic is not None:
            batch = mix_batches({k: v for k, v in batch.items() if torch.is_tensor(v)},
                                synthetic.batch(n_syn, index=step))
        out = model(batch["image"], landmarks_only=not needs_mesh)
        loss, _ = total_loss(out, batch, cfg.loss, size, extend_landmarks, model=model,
                             perceptual=perceptual)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print("| config | backbone | input | batch | synthetic | data | threads | s / step | images / s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.config} | {model.config.backbone} | {size} | {cfg.batch_size} | {n_syn} | {data} | "
          f"{args.threads} | {med:.3f} | {cfg.batch_size / med:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
