"""Attention defenses on every model family: temperature scaling reaches every attention module of
every stage (T = 1 exact, T ≠ 1 changes each one), CNNs are skipped, TAP + ADL trains wherever
the family allows it."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
from families import FAMILIES, build, images
from torch import nn

from defenses.tap_adl import TapAdl, TokenAwarePooling
from defenses.temperature_scaling import TemperatureScaling
from robustbench_vit.api import ScenarioNotApplicable, UnsupportedModel, adapter_for
from robustbench_vit.models.adapters.attention import AttentionMode

CNNS = ["resnet", "convnext"]
ATTENTION_FAMILIES = [f for f in FAMILIES if f not in CNNS]
TAP_FAMILIES = {"vit", "vit_reg", "deit", "beit", "eva02", "cait", "convit", "xcit"}
"""Families whose every attention input is one patch-token grid (with prefix tokens)."""

ATTENTION_CLASSES = {
    "Attention", "AttentionPoolLatent", "EvaAttention", "TalkingHeadAttn", "ClassAttn",
    "WindowAttention", "GPSA", "MHSA", "XCA", "LocallyGroupedAttn", "GlobalSubSampleAttn",
    "AttentionDownsample", "MultiScaleAttention", "MultiScaleAttentionPoolFirst",
}
"""timm class names of attention modules, written out independently of the adapters."""

EXPECTED_COUNT = {
    "vit": 3, "vit_reg": 3, "deit": 3, "beit": 3, "eva02": 3,
    "cait": 3 + 1,  # talking-heads blocks, then a class-attention block
    "swin": 2 + 2, "swinv2": 2 + 2, "pit": 2 + 2,  # two stages
    "convit": 2 + 1,  # GPSA blocks, then an MHSA block
    "xcit": 3 + 1,  # XCA blocks, then a class-attention block
    "twins": 2 + 2,  # locally-grouped and global sub-sampled attention per stage
    "levit": 2 + 1 + 2,  # stage blocks and the attention downsampling between them
    "mvitv2": 1 + 2 + 5 + 2,  # mvitv2_tiny's depths
}
"""Attention modules of each tiny family model (from its configuration in families.py)."""

Call = tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]


@functools.cache
def _built(family: str) -> nn.Module:
    return build(family)


def fresh(family: str) -> nn.Module:
    """A copy of the family's tiny model (built once per session)."""
    return copy.deepcopy(_built(family))


def net_of(model: nn.Module) -> nn.Module:
    """The timm network inside `model`."""
    return adapter_for(model)[1]


def attention_of(model: nn.Module) -> list[nn.Module]:
    """The adapter's attention modules of `model`."""
    adapter, net = adapter_for(model)
    return adapter.attention_modules(net)


def same_modules(base: nn.Module, model: nn.Module) -> list[nn.Module]:
    """The modules of `model` (a patched copy of `base`) at the paths of the attention modules of
    `base` (found by path: a patch may change their classes)."""
    base_net, net = net_of(base), dict(net_of(model).named_modules())
    paths = {id(m): n for n, m in base_net.named_modules()}
    return [net[paths[id(m)]] for m in attention_of(base)]


def first(out: Any) -> torch.Tensor:
    """The tensor an attention module returns (MViTv2's also return the feature size)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def detached(value: Any) -> Any:
    """`value` with every tensor cloned (hooks keep inputs that later code may reuse)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple | list):
        return type(value)(detached(v) for v in value)
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    return value


def capture(model: nn.Module, modules: list[nn.Module],
            x: torch.Tensor) -> tuple[torch.Tensor, list[Call]]:
    """Logits of an eval forward, and (args, kwargs, output) of each module in it."""
    calls: dict[int, Call] = {}

    def hook(i: int) -> Any:
        def record(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            calls[i] = (detached(args), detached(kwargs), first(out).detach().clone())
        return record

    handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    assert sorted(calls) == list(range(len(modules))), "an attention module did not run"
    return logits, [calls[i] for i in range(len(modules))]


def softmax_keys(attn: nn.Module, call: Call) -> int:
    """Keys per softmax row of `attn` (unpatched) on a captured input."""
    args, kwargs, _ = call
    with torch.no_grad(), AttentionMode(1.0, record=True) as mode:
        attn(*args, **kwargs)
    return int(mode.maps[0].shape[-1])


# --- temperature scaling ---------------------------------------------------------------------
@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_every_attention_module_is_tempered(family: str) -> None:
    base = fresh(family)
    known = [n for n, m in net_of(base).named_modules() if type(m).__name__ in ATTENTION_CLASSES]
    model = TemperatureScaling(temperature=2.0).apply(copy.deepcopy(base))
    tempered = {n: m for n, m in net_of(model).named_modules() if getattr(m, "_rbv_tempered", 0)}
    assert len(known) == EXPECTED_COUNT[family]
    assert len(attention_of(model)) == len(tempered) == len(known)
    assert sorted(tempered) == sorted(known)
    assert all(m.attn_temperature == 2.0 for m in tempered.values())


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_temperature_one_is_bit_identical(family: str) -> None:
    base, x = fresh(family), images(family)
    logits, calls = capture(base, attention_of(base), x)
    model = TemperatureScaling(temperature=1.0).apply(copy.deepcopy(base))
    logits_t, calls_t = capture(model, same_modules(base, model), x)
    assert torch.equal(logits_t, logits)
    for i, ((_, _, out), (_, _, out_t)) in enumerate(zip(calls, calls_t, strict=True)):
        assert torch.equal(out_t, out), f"attention module {i} changed at T=1"


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_temperature_changes_every_attention_module(family: str) -> None:
    """Each module, fed its own unpatched input, answers differently at T=3 (a softmax over one
    key is 1 at any temperature: such modules must stay the same)."""
    base, x = fresh(family), images(family)
    base_modules = attention_of(base)
    logits, calls = capture(base, base_modules, x)
    keys = [softmax_keys(m, c) for m, c in zip(base_modules, calls, strict=True)]
    model = TemperatureScaling(temperature=3.0).apply(copy.deepcopy(base)).eval()
    with torch.no_grad():
        assert not torch.equal(model(x), logits)
        for i, (attn, (args, kwargs, out)) in enumerate(
                zip(same_modules(base, model), calls, strict=True)):
            changed = not torch.equal(first(attn(*args, **kwargs)), out)
            assert changed == (keys[i] > 1), \
                f"{family} attention module {i} ({type(attn).__name__}, {keys[i]} keys)"
    assert sum(k > 1 for k in keys) >= len(keys) - 1


@pytest.mark.parametrize("family", CNNS)
def test_cnns_are_skipped_with_the_adapter_reason(family: str) -> None:
    for defense in (TemperatureScaling(), TapAdl(), TapAdl(tap=False)):
        with pytest.raises(UnsupportedModel, match="has no attention") as info:
            defense.apply(fresh(family))
        assert isinstance(info.value, ScenarioNotApplicable)  # a skipped cell, not an error


# --- TAP + ADL -------------------------------------------------------------------------------
def prepared(family: str) -> tuple[nn.Module, TapAdl]:
    """The family model with tap_adl applied (TAP where the family allows it, else ADL alone);
    checks that TAP is refused, without touching the model, where it is not allowed."""
    model = fresh(family)
    if family in TAP_FAMILIES:
        return TapAdl().apply(model), TapAdl()
    with pytest.raises(UnsupportedModel, match="`tap: false` gives ADL alone"):
        TapAdl().apply(model)
    assert not any(getattr(m, "_rbv_tempered", False) for m in model.modules())
    return TapAdl(tap=False).apply(model), TapAdl(tap=False)


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_tap_where_the_family_has_a_token_grid(family: str) -> None:
    model, defense = prepared(family)
    modules = attention_of(model)
    taps = [getattr(m, "tap", None) for m in modules]
    if defense.tap:
        assert all(isinstance(t, TokenAwarePooling) for t in taps)
        for t in taps:  # a non-uniform mix, so TAP acts
            nn.init.normal_(t.predictor[2].weight)  # type: ignore[union-attr]
        x = images(family)
        with torch.no_grad():
            assert not torch.equal(model.eval()(x), fresh(family)(x))
    else:
        assert all(t is None for t in taps)


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_adl_trains_on_every_family_with_attention(family: str) -> None:
    model, defense = prepared(family)
    x, y = images(family), torch.arange(4) % 10
    logits = model.train()(x)
    loss = defense.training_loss(model, x, y, logits)
    assert loss is not None and torch.isfinite(loss) and loss.requires_grad
    (nn.functional.cross_entropy(logits, y) + loss).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    first_attn = attention_of(model)[0]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in first_attn.parameters())
    assert all(m.last_attn is None for m in attention_of(model))  # consumed


@pytest.mark.parametrize("family", ["vit", "swin", "mvitv2"])
def test_adl_from_eval_logits_runs_a_training_pass(family: str) -> None:
    model, defense = prepared(family)
    x, y = images(family), torch.arange(4) % 10
    with torch.no_grad():
        logits = model.eval()(x)
    loss = defense.training_loss(model, x, y, logits)
    assert loss is not None and torch.isfinite(loss) and loss.requires_grad
    assert not model.training
