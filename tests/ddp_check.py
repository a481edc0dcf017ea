"""Run by tests/test_train.py under ``accelerate launch --multi_gpu --num_processes 2`` (CPU, gloo).

Checks that the ranks see different data shards and that the saved best weights equal every rank's weights.
Usage: ddp_check.py OUT_DIR TINY_CONFIG
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from training.config import load_config
from training.train import EpochSampler, train


def main() -> None:
    out_dir, config = Path(sys.argv[1]), sys.argv[2]
    acc = Accelerator()
    assert acc.num_processes == 2, acc.num_processes
    assert dist.get_backend() == "gloo", dist.get_backend()
    loader = acc.prepare(DataLoader(list(range(16)), batch_size=4, sampler=EpochSampler(16, 0)))
    seen = torch.cat(list(loader))
    (out_dir / f"rank{acc.process_index}.json").write_text(json.dumps(sorted(seen.tolist())))
    cfg = load_config(config, [f"output_dir={out_dir / 'run'}", "max_steps=2", "save_every=2", "val_every=2"])
    summary = train(cfg, return_model=True)  # ends with the process group destroyed; the best model is saved
    saved = load_file(str(out_dir / "run" / "best" / "model.safetensors"))
    mine = summary["model"].state_dict()
    for k, v in saved.items():
        assert torch.equal(v, mine[k].cpu()), f"rank {acc.process_index}: {k} differs from the saved weights"


if __name__ == "__main__":
    main()
