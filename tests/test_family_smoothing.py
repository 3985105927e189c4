"""Derandomized smoothing on every model family: the base classifier is the model's own head (both
heads of a distilled DeiT), token dropping equals the masked reference wherever it is exact, the
attack view is differentiable everywhere, and certify compares like with like."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
from families import FAMILIES, build, images
from torch import nn

from defenses.smoothing import SmoothedViT, SmoothingDefense
from robustbench_vit.api import UnsupportedModel
from robustbench_vit.scenarios.base import CellContext
from robustbench_vit.scenarios.certify import CertifyScenario, smoothed_prediction

TOKEN_FAMILIES = {"vit", "vit_reg", "deit"}
"""Families whose tiny model classifies kept tokens (token dropping is exact)."""

VIT_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_avg": (FAMILIES["vit"][0], {**FAMILIES["vit"][1], "global_pool": "avg"}),
    "vit_avg_prefix": (FAMILIES["vit"][0], {**FAMILIES["vit"][1], "global_pool": "avg",
                                            "pool_include_prefix": True}),
    "vit_reg_pos": (FAMILIES["vit"][0], {**FAMILIES["vit"][1], "reg_tokens": 2}),
    "vit_no_cls": (FAMILIES["vit"][0], {**FAMILIES["vit"][1], "class_token": False,
                                        "global_pool": "avg"}),
}
"""More plain ViTs: avg pooling (with and without the prefix), register tokens that get position
embeddings (no_embed_class off, unlike DINOv2), no CLS token at all."""

DROPPING = sorted(TOKEN_FAMILIES) + sorted(VIT_VARIANTS)

ABLATIONS = [
    {"ablation": "column", "size": 4, "stride": 2},
    {"ablation": "column", "size": 11, "stride": 3},
    {"ablation": "block", "size": 12, "stride": 4},
    {"ablation": "block", "size": 5, "stride": 7},
]


@functools.cache
def built(name: str) -> nn.Module:
    """The tiny model of a family or ViT variant (built once per session), frozen."""
    try:
        if name in VIT_VARIANTS:
            FAMILIES[name] = VIT_VARIANTS[name]
        model = build(name)
    finally:
        if name in VIT_VARIANTS:
            FAMILIES.pop(name, None)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture()
def family_model(request: pytest.FixtureRequest) -> nn.Module:
    """A private copy of the parametrized family's (or ViT variant's) model, NormalizedModel-
    wrapped, in eval mode."""
    return copy.deepcopy(built(request.param)).eval()


def smoothed(model: nn.Module, **params: Any) -> SmoothedViT:
    """`model` smoothed with `params`, in eval mode."""
    out = SmoothingDefense(**params).apply(model).eval()
    assert isinstance(out, SmoothedViT)
    return out


def whole_image(width: int, **params: Any) -> dict[str, Any]:
    """One column ablation that keeps the whole image."""
    return {"ablation": "column", "size": width, "stride": width, **params}


def image_family(name: str) -> str:
    """The family whose images the model takes (the ViT variants take the ViT's)."""
    return "vit" if name in VIT_VARIANTS else name


@pytest.mark.parametrize("family_model", list(FAMILIES), indirect=True)
def test_whole_image_ablation_votes_for_the_models_prediction(
    family_model: nn.Module, request: pytest.FixtureRequest
) -> None:
    family = request.node.callspec.params["family_model"]
    x = images(family, 6)
    expected = family_model(x)
    model = smoothed(family_model, **whole_image(x.shape[-1]))
    assert model.tokens == (family in TOKEN_FAMILIES), model.token_reason
    for dropping in (True, False) if model.tokens else (True,):
        votes = model.votes(x, token_dropping=dropping)
        assert votes.shape == expected.shape and (votes.sum(1) == 1).all()
        assert torch.equal(votes.argmax(1), expected.argmax(1)), dropping
        logits = model.logits(x, token_dropping=dropping)[0]
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family_model", DROPPING, indirect=True)
@pytest.mark.parametrize("params", ABLATIONS, ids=lambda p: "{ablation}{size}s{stride}".format(**p))
def test_token_dropping_equals_the_masked_reference(
    family_model: nn.Module, params: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    x = images(image_family(request.node.callspec.params["family_model"]), 3)
    model = smoothed(family_model, **params)
    assert model.tokens, model.token_reason
    dropped, full = model.logits(x, token_dropping=True), model.logits(x, token_dropping=False)
    torch.testing.assert_close(dropped, full, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.votes(x, token_dropping=True), model.votes(x, token_dropping=False))
    assert torch.equal(model.votes(x, token_dropping=True).sum(1),
                       torch.full((len(x),), float(len(model.positions(32, 32)))))
    for position in model.positions(32, 32)[:3]:
        torch.testing.assert_close(model.ablated_logits(x, position, token_dropping=True),
                                   model.ablated_logits(x, position, token_dropping=False),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family_model", ["deit", "vit_reg", "vit_reg_pos"], indirect=True)
def test_kept_tokens_carry_the_prefix_of_the_models_own_embedding(family_model: nn.Module) -> None:
    """The fast path's prefix (CLS, DIST or register tokens and their position embeddings) is the
    one the model's `_pos_embed` builds."""
    model = smoothed(family_model)
    vit: Any = model.backbone
    x = torch.zeros(1, vit.patch_embed.num_patches, vit.embed_dim)
    reference = vit._pos_embed(x)[:, : vit.num_prefix_tokens]
    torch.testing.assert_close(model._prefix_tokens(1), reference)


@pytest.mark.parametrize("family_model", list(FAMILIES), indirect=True)
def test_attack_view_and_base_classifier_work_on_every_family(
    family_model: nn.Module, request: pytest.FixtureRequest
) -> None:
    family = request.node.callspec.params["family_model"]
    defense = SmoothingDefense(size=8)
    model = smoothed(family_model, size=8)
    view = defense.attack_view(model)
    assert view is not None
    x = images(family, 3).requires_grad_(True)
    out = view(x)
    assert out.shape == (3, 10)
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    base = model.base_classifier().eval()
    torch.testing.assert_close(base(x.detach()), family_model(x.detach()))
    assert model.train()(x.detach()).shape == (3, 10)  # ablation training: one random ablation
    assert defense.unsupported(family_model) is None


@pytest.mark.parametrize("family_model", ["deit"], indirect=True)
def test_certify_base_and_smoothed_accuracy_read_the_same_heads(family_model: nn.Module) -> None:
    x = images("deit", 8)
    labels = family_model(x).argmax(1)
    defense = SmoothingDefense(**whole_image(x.shape[-1]))
    model = defense.apply(family_model).eval()
    assert torch.equal(smoothed_prediction(model(x)), labels)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=4)
    ctx = CellContext(model=model, loader=loader, device=torch.device("cpu"), seed=0,
                      num_classes=10, defense=defense)
    rows = {r.metric: r.value for r in CertifyScenario(patch_size=1).run(ctx)}
    assert rows["smoothed_accuracy"] == rows["accuracy"] == 1.0


def test_unsupported_models_raise_unsupported_model() -> None:
    defense = SmoothingDefense()
    with pytest.raises(UnsupportedModel, match="NormalizedModel"):
        defense.apply(nn.Linear(3, 2))
    assert "NormalizedModel" in (defense.unsupported(nn.Linear(3, 2)) or "")
    with pytest.raises(UnsupportedModel, match="SmoothedViT"):
        defense.attack_view(nn.Linear(3, 2))
