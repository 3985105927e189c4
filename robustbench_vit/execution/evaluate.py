"""`evaluate_cell`: the one place that builds models and runs forward passes for a cell."""

from __future__ import annotations

import copy
import errno
import logging
import random
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..core.cells import Cell, ModelConfig, stable_hash
from ..core.devices import device_problem
from ..core.errors import DataError, DeviceError, RbvError, ScenarioNotApplicable
from ..core.metrics import require_registered
from ..core.params import validate_params
from ..core.plugins import load_plugins
from ..core.records import CellResult, Span
from ..core.registry import DATASETS, DEFENSES, scenario_class
from ..data.datasets import dataset_len, heldout_indices, subset
from ..models.digest import weights_digest
from ..models.sources import build_model
from ..scenarios.base import CellContext

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as given, when this machine has
    it (DeviceError saying what it has otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem(name)
    if problem is not None:
        raise DeviceError(f"device {problem}")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """"cpu" or "cuda:0 (NVIDIA H100 ...)" for result rows."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return device.type


def seed_everything(seed: int) -> None:
    """Seed every random source (torch CPU and CUDA, numpy, python) for one cell.

    The seed comes from the cell key, so a cell's numbers do not depend on which cells ran
    before it in the same process (local runner, or a reused Ray worker).
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""OS errors that end the run (exit 2, naming the path) instead of failing one cell: a full disk
or a read-only file system fails every cell after it the same way."""

_MODEL_CACHE: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()
_MODEL_CACHE_SIZE = 8


class NonFiniteOutput(RbvError):
    """A model returned NaN or infinite logits: any number computed from them (the argmax of
    NaN is class 0) would be meaningless, so the cell fails with this reason instead."""


def guard_outputs(model: nn.Module, label: str) -> nn.Module:
    """`model` with a forward hook that raises NonFiniteOutput on NaN/inf outputs, naming the
    model `label` (once per module: a deep copy keeps the hook it had)."""
    if getattr(model, "_rbv_finite_guard", False):
        return model

    def refuse(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point() and not bool(
                torch.isfinite(output.detach()).all()):
            kind = "NaN" if bool(torch.isnan(output.detach()).any()) else "infinite"
            raise NonFiniteOutput(
                f"model {label} returned {kind} logits: its weights hold NaN/inf, or the "
                "forward pass overflows (e.g. under amp); no number is reported for this cell")

    model.register_forward_hook(refuse)
    model._rbv_finite_guard = True  # type: ignore[assignment]
    return model


def load_model(cfg: ModelConfig, device: torch.device) -> nn.Module:
    """The base model of a cell, cached in-process (scenarios never modify weights); its
    outputs are checked to be finite on every forward pass."""
    key = (stable_hash(asdict(cfg)), str(device))
    if key in _MODEL_CACHE:
        _MODEL_CACHE.move_to_end(key)
        return _MODEL_CACHE[key]
    model = guard_outputs(build_model(cfg, device), cfg.name)
    for p in model.parameters():
        p.requires_grad_(False)
    _remember(key, model)
    return model


def _remember(key: tuple[str, str], model: nn.Module) -> None:
    _MODEL_CACHE[key] = model
    while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
        _MODEL_CACHE.popitem(last=False)


def build_defended(cell: Cell, device: torch.device) -> tuple[nn.Module, Any]:
    """The cell's model with its defense applied; returns (model, defense).

    Training defenses come from the zoo (the base model fine-tuned with the defense, cached);
    inference defenses edit a private copy of the (shared, cached) base model.
    """
    defense = validate_params(DEFENSES.get(cell.defense), cell.defense_params)
    key = (stable_hash([asdict(cell.model), cell.defense, cell.defense_params]), str(device))
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key], defense
    if defense.needs_training():
        from ..models.defended import load_defended_model

        model = load_defended_model(cell.model, defense, device)
    elif defense.is_identity():
        return load_model(cell.model, device), defense
    else:
        model = defense.apply(copy.deepcopy(load_model(cell.model, device)))
    for p in model.parameters():
        p.requires_grad_(False)
    _remember(key, guard_outputs(model, f"{cell.model.name} + {cell.defense}").eval())
    return model, defense


@dataclass(frozen=True, kw_only=True)
class CellData:
    """The cell's evaluated slice as a loader, the class count, and a held-out sampler."""

    loader: DataLoader
    num_classes: int
    heldout: Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def build_data(cell: Cell, model: nn.Module, span: Span | None = None) -> CellData:
    """The cell's deterministic data slice (positions `span` of it), preprocessed for `model`."""
    source = validate_params(DATASETS.get(cell.data.dataset), cell.data.params)
    full = source.load(getattr(model, "data_config", None))
    total, wanted = dataset_len(full), cell.data.n_examples
    if wanted is not None and wanted > total:  # never a silently smaller sample
        raise DataError(f"data.n_examples is {wanted}, but the {cell.data.dataset} data set has "
                        f"only {total} images: lower n_examples, or leave it out to use them all")
    dataset = subset(full, wanted, cell.seed)
    if span is not None:
        dataset = Subset(dataset, range(span[0], min(span[1], dataset_len(dataset))))

    def heldout(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = heldout_indices(len(full), cell.data.n_examples, cell.seed, n) or list(range(n))
        items = [full[i] for i in idx[:n]]
        return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])

    loader = DataLoader(dataset, batch_size=cell.data.batch_size, shuffle=False)
    return CellData(loader=loader, num_classes=source.num_classes(), heldout=heldout)


def build_scenario(cell: Cell) -> Any:
    """The cell's scenario object, validated from its parameters."""
    scenario = scenario_class(cell.scenario_kind, cell.scenario_params.get("name"))
    return scenario.from_params({**cell.scenario_params, **cell.scenario_options})


def evaluate_cell(cell: Cell, advance: Callable[[int], None] | None = None, *,
                  span: Span | None = None) -> CellResult:
    """Run one cell (or, with `span`, one chunk of it: the result carries `partial` statistics).

    Never raises for a failing scenario: returns status "error" with the traceback.
    """
    load_plugins()
    start = time.perf_counter()
    device_name = cell.device  # a device this machine lacks fails the cell, named as asked
    partial, weights = None, None
    try:
        device = resolve_device(cell.device)
        device_name = device_label(device)
        seed_everything(int(cell.key[:8], 16))
        model, defense = build_defended(cell, device)
        weights = weights_digest(model)
        model.eval()  # every cell starts in eval mode, whatever an earlier cell left behind
        view = defense.attack_view(model)
        data = build_data(cell, model, span)
        scenario = build_scenario(cell)
        ctx = CellContext(model=model, loader=data.loader, device=device, seed=cell.seed,
                          num_classes=data.num_classes, amp=cell.amp,
                          defense_differentiable=type(defense).differentiable,
                          advance=advance or (lambda n: None), model_config=cell.model,
                          references=cell.references, heldout=data.heldout,
                          load_model=lambda cfg: load_model(cfg, device),
                          data_key=stable_hash([asdict(cell.data), cell.seed]),
                          model_key=stable_hash([cell.model.source, cell.model.fingerprint,
                                                 cell.defense, cell.defense_params,
                                                 *([cell.model.finetune]
                                                   if cell.model.finetune else [])]),
                          attack_model=view.eval() if view is not None else None,
                          defense=defense,
                          first_batch=span[0] // cell.data.batch_size if span else 0)
        if span is None:
            measurements = scenario.run(ctx)
            require_registered(m.metric for m in measurements)
        else:
            measurements, partial = [], scenario.partial(ctx)
        status, error = "ok", None
    except ScenarioNotApplicable as exc:
        measurements, status, error = [], "skipped", str(exc)
    except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the run goes on
        if isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS:
            raise  # not this cell's fault: every next cell would fail the same way
        log.debug("cell %s failed", cell.key, exc_info=True)
        measurements, status = [], "error"
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
    return CellResult(cell_key=cell.key, status=status, measurements=measurements, error=error,
                      seconds=time.perf_counter() - start, device=device_name,
                      weights=weights, partial=partial)


def cell_size(cell: Cell) -> int:
    """Number of images a cell evaluates (for progress bars), without loading the data when
    possible."""
    if cell.data.n_examples:
        return cell.data.n_examples
    try:
        source = validate_params(DATASETS.get(cell.data.dataset), cell.data.params)
        return len(source.load(None))
    except Exception:  # noqa: BLE001 - only a progress estimate
        return 0
