"""The data loaders of rankmix's data modules: order depends only on (seed, epoch), so a resumed run sees the
same batches as an uninterrupted one."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler


def seeded_loader(dm, data: list, train: bool, collate_fn) -> DataLoader:
    """``data`` of data module ``dm`` (its seed, batch sizes, workers), one shard per process of its trainer
    (one replica without a trainer), shuffled for training."""
    trainer = dm.trainer
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=train, seed=dm.seed, drop_last=False)
    return DataLoader(data, batch_size=dm.batch_size if train else dm.eval_batch_size, sampler=sampler,
                      collate_fn=collate_fn, num_workers=dm.num_workers, generator=torch.Generator().manual_seed(dm.seed))
