"""The data loaders of rankmix's data modules: order depends only on (seed, epoch), so a resumed run sees the
same batches as an uninterrupted one."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler


def prepared_datamodule(cfg):
    """The data module of ``cfg.task`` (cache under ``cfg.paths.cache_dir``), its paths checked and its data
    prepared (generated, or read and indexed)."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.task.datamodule, cache_dir=cfg.paths.cache_dir)
    dm.check_paths()
    dm.prepare_data()
    return dm


def seeded_loader(dm, data: list, train: bool, collate_fn) -> DataLoader:
    """``data`` of data module ``dm`` (its seed, batch sizes, workers), one shard per process of its trainer
    (one replica without a trainer), shuffled for training."""
    trainer = dm.trainer
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=train, seed=dm.seed, drop_last=False)
    return DataLoader(data, batch_size=dm.batch_size if train else dm.eval_batch_size, sampler=sampler,
                      collate_fn=collate_fn, num_workers=dm.num_workers, generator=torch.Generator().manual_seed(dm.seed))


def pad_right(seqs: list[list[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, longest) padded on the right with ``pad_value``, attention mask: 1 on the real tokens)."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_value, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def pad_left(seqs: list[list[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, longest) padded on the left with ``pad_value``, attention mask: 1 on the real tokens): the layout
    of batched generation, whose new tokens all start at the same column."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_value, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, n - len(s):] = 1
    return ids, mask


class SeededSplitLoaders:
    """LightningDataModule mixin: train / val / test loaders over ``self.examples[split]`` with ``self.collate``
    (``seeded_loader``; training shuffled)."""

    def _loader(self, split: str, train: bool) -> DataLoader:
        return seeded_loader(self, self.examples[split], train, self.collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
