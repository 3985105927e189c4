"""Supervised training of a wrapped model: AdamW with a one-cycle schedule, seeded, on tensors or
loaders."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

TRAIN_THREADS = 2
"""Intra-op threads while training on the CPU. Fixed, because the thread count changes the order of
floating-point reductions and so the trained weights: with it, a recipe gives the same checkpoint
whatever OMP_NUM_THREADS, the machine's core count or a Ray task's CPUs are (on one CPU type)."""


@contextmanager
def training_threads(device: torch.device) -> Iterator[None]:
    """Run the block with TRAIN_THREADS intra-op threads (CPU training only), then restore."""
    if device.type != "cpu":
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimizer settings of a training run."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float = 0.0
    max_shift: int = 0
    seed: int = 0
    distill_temperature: float = 4.0
    distill_weight: float = 0.9


def random_translate(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each batch by a random offset in [-max_shift, max_shift] (zero fill) — light
    augmentation."""
    if max_shift <= 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[int, float], None] | None = None,
    teacher: nn.Module | None = None,
    extra_loss: Callable[..., torch.Tensor | None] | None = None,
) -> float:
    """Train `model` in place; returns wall seconds. `on_epoch(epoch, mean_loss)` reports progress.

    With a `teacher`, the loss is Hinton et al.'s distillation:
    (1−w)·CE + w·T²·KL(teacher ‖ student).
    Only parameters with requires_grad train (fine-tuning schemes freeze the rest).
    `extra_loss(model, x, y, logits)` adds a term (a defense's regularizer) when it returns one.
    """
    with training_threads(torch.device(device)):
        return _train(model, train_set, cfg, device, on_epoch, teacher, extra_loss)


def _train(model: nn.Module, train_set: Dataset, cfg: TrainConfig, device: torch.device,
           on_epoch: Callable[[int, float], None] | None, teacher: nn.Module | None,
           extra_loss: Callable[..., torch.Tensor | None] | None) -> float:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                        drop_last=len(train_set) > cfg.batch_size)  # type: ignore[arg-type]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                steps_per_epoch=len(loader))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    start = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        total, count = 0.0, 0
        for x, y in loader:
            x = random_translate(x.to(device), cfg.max_shift, gen)
            y = y.to(device)
            logits = model(x)
            loss = loss_fn(logits, y)
            if teacher is not None:
                loss = distillation_loss(logits, teacher, x, loss, cfg)
            if extra_loss is not None and (extra := extra_loss(model, x, y, logits)) is not None:
                loss = loss + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + float(loss.detach()) * len(y), count + len(y)
        if on_epoch:
            on_epoch(epoch, total / max(count, 1))
    model.eval()
    return time.perf_counter() - start


def distillation_loss(logits: torch.Tensor, teacher: nn.Module, x: torch.Tensor,
                      hard: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """(1−w)·hard + w·T²·KL(softmax(teacher/T) ‖ softmax(student/T))."""
    t = cfg.distill_temperature
    with torch.no_grad():
        target = (teacher(x) / t).softmax(1)
    soft = nn.functional.kl_div((logits / t).log_softmax(1), target, reduction="batchmean")
    return (1 - cfg.distill_weight) * hard + cfg.distill_weight * t * t * soft


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, device: torch.device,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on `dataset`."""
    model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return correct / max(total, 1)
