"""A toy paper (linear regression on a fixed random dataset) to test the runner without a real model."""
from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.common.resume import ResumableLoader
from experiments.papers import Paper


@dataclass
class ToyModelConfig:
    width: int = 4
    lr: float = 0.05
    nan_at_step: int = -1  # inject a NaN loss at this step (tests the guard)

    def __post_init__(self):
        if self.width < 1:
            raise ValueError(f"model.width: {self.width} must be >= 1")


@dataclass
class ToyDataConfig:
    root: str = "unused"
    batch_size: int = 8
    samples: int = 64


class ToyModule(L.LightningModule):
    def __init__(self, cfg: ToyModelConfig):
        super().__init__()
        self.cfg = cfg
        self.net = torch.nn.Linear(cfg.width, 1)

    def model_step(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)

    def training_step(self, batch, batch_idx):
        loss = self.model_step(batch)
        if self.global_step == self.cfg.nan_at_step:
            loss = loss * float("nan")
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.model_step(batch))

    def test_step(self, batch, batch_idx):
        self.log("test/mse", self.model_step(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.cfg.lr)

    def report(self, fig_dir):
        return {"zero_predictor.mse": 1.0}, "## Toy section\n\nlinear regression\n"


class ToyData(L.LightningDataModule):
    def __init__(self, cfg: ToyDataConfig, width: int, seed: int):
        super().__init__()
        self.seed = seed
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(cfg.samples, width, generator=g)
        self.dataset = TensorDataset(x, x.sum(-1))
        self.batch_size = cfg.batch_size

    def train_dataloader(self):
        return ResumableLoader(_EpochSeeded(self), lambda: self.trainer)

    def val_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size)

    test_dataloader = val_dataloader


class _EpochSeeded:
    """Batches in an order that is a pure function of (seed, epoch), like the shard streams."""

    def __init__(self, data: ToyData):
        self.data = data

    def _loader(self):
        epoch = self.data.trainer.current_epoch
        g = torch.Generator().manual_seed(self.data.seed * 1000 + epoch)
        return DataLoader(self.data.dataset, batch_size=self.data.batch_size, shuffle=True, generator=g)

    def __iter__(self):
        return iter(self._loader())

    def __len__(self):
        return len(self._loader())


def build(cfg):
    return ToyModule(cfg.model), ToyData(cfg.data, cfg.model.width, cfg.seed)


PAPER = Paper(name="toy", model_config=ToyModelConfig, data_config=ToyDataConfig, build=build)
