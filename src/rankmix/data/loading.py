"""The data loaders of rankmix's data modules: order depends only on (seed, epoch), so a resumed run sees the
same batches as an uninterrupted one."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler


def prepared_datamodule(cfg):
    """The data module of ``cfg.task`` (cache under ``cfg.paths.cache_dir``), its paths checked and its data
    prepared (generated, or read and indexed). At ``scale=paper`` a data module that can read a benchmark's made-up
    copy (``made_up``) reads its files only."""
    import inspect

    from hydra.utils import get_class, instantiate

    takes = "made_up" in inspect.signature(get_class(cfg.task.datamodule._target_)).parameters
    paper = {"made_up": False} if takes and cfg.get("scale") == "paper" else {}
    dm = instantiate(cfg.task.datamodule, cache_dir=cfg.paths.cache_dir, **paper)
    dm.check_paths()
    dm.prepare_data()
    return dm


def seeded_loader(dm, data: list, train: bool, collate_fn) -> DataLoader:
    """``data`` of data module ``dm`` (its seed, batch sizes, workers), one shard per process of its trainer
    (one replica without a trainer), shuffled for training; the training loader resumes mid-epoch
    (``ResumableLoader``)."""
    trainer = dm.trainer
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=train, seed=dm.seed, drop_last=False)
    generator = torch.Generator().manual_seed(dm.seed)
    if not train:
        return DataLoader(data, batch_size=dm.eval_batch_size, sampler=sampler, collate_fn=collate_fn,
                          num_workers=dm.num_workers, generator=generator)
    loader = ResumableLoader(data, batch_sampler=SkippableBatches(sampler, dm.batch_size, drop_last=False),
                             collate_fn=collate_fn, num_workers=dm.num_workers, generator=generator)
    loader.datamodule = dm
    return loader


class SkippableBatches(BatchSampler):
    """A ``BatchSampler`` whose next pass can start after its first ``skip`` batches (their indices are drawn and
    dropped: no data is read). Its length stays the epoch's."""

    skip = 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return itertools.islice(super().__iter__(), skip, None)


class ResumableLoader(DataLoader):
    """A training loader that Lightning resumes mid-epoch, through its stateful-loader interface
    (``state_dict``/``load_state_dict``, saved in every checkpoint): the state is how many batches of the current
    epoch the trainer has trained on; after loading it, the epoch's pass starts at the next batch. A SLURM requeue
    checkpoint, written mid-epoch, so resumes to the same batches as an uninterrupted run."""

    datamodule = None

    def state_dict(self) -> dict:
        trainer = self.datamodule.trainer if self.datamodule is not None else None
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0
        return {"batches_trained": done}

    def load_state_dict(self, state_dict: dict) -> None:
        self.batch_sampler.skip = int(state_dict.get("batches_trained", 0))


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
