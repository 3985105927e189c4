"""Derandomized smoothing against patches: column or block ablations vote (Salman et al. 2022).

Every ablation keeps a band of `size` columns (or a `size`×`size` block), wrapping around the image,
and zeroes the other pixels in [0,1] space. The smoothed model returns the votes of all ablation
positions (stride `stride`) per class.

The base classifier depends on the model, never on `token_dropping`:

- A ViT whose family adapter says dropping fully ablated patch tokens is exact (timm
  VisionTransformer / VisionTransformerDistilled with a plain stride-p patch convolution, a fixed
  image size and token or avg pooling) classifies the kept tokens only: the prefix tokens and the
  tokens whose patch holds a retained pixel, read by the model's own head (both heads of a
  distilled DeiT; avg pooling averages the kept patch tokens). The reference path runs the full
  sequence with the dropped tokens masked out of attention; with `token_dropping` only the kept
  tokens are embedded and encoded, which is the same function, so both give the same votes.
- Every other image classifier (hierarchical ViTs, CNNs, ...) is the model itself on the
  pixel-ablated image, `model(x * mask)`; `token_dropping` does not apply to it.

See `robustbench_vit.scenarios.certify` for the certificate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from robustbench_vit.api import (
    Defense,
    FamilyAdapter,
    NormalizedModel,
    UnsupportedModel,
    adapter_for,
    register_defense,
)

log = logging.getLogger(__name__)

Ablation = Literal["column", "block"]
CHUNK = 4096
"""Ablated images per forward pass of the kept-token classifier, at most (keeps forwards large)."""
CHUNK_TOKENS = 70_000
"""...and at most this many tokens per forward (bounds memory at any resolution: ~4,100 32-px
digits images of 17 tokens, ~350 224-px ViT-S/16 images of 197 tokens)."""
PIXEL_CHUNK = 512
"""Ablated images per forward pass of a model on full-size pixel-ablated images, at most..."""
PIXEL_CHUNK_PIXELS = PIXEL_CHUNK * 32 * 32
"""...and at most this many pixels per forward (their activations, at the model's resolution,
bound the memory: 512 32-px images, 10 224-px images)."""


def ablation_positions(
    kind: Ablation, height: int, width: int, stride: int
) -> list[tuple[int, int]]:
    """(row, column) of every ablation position; a column ablation's row is always 0."""
    cols = range(0, width, stride)
    if kind == "column":
        return [(0, c) for c in cols]
    return [(r, c) for r in range(0, height, stride) for c in cols]


def ablation_masks(
    kind: Ablation,
    size: int,
    positions: list[tuple[int, int]],
    height: int,
    width: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Retained-pixel masks (A, H, W) as floats: 1 inside the (wrapping) band or block, 0
    outside."""
    offsets = torch.arange(size, device=device)
    masks = torch.zeros(len(positions), height, width, device=device)
    for i, (r, c) in enumerate(positions):
        cols = (c + offsets) % width
        if kind == "column":
            masks[i][:, cols] = 1.0
        else:
            rows = (r + offsets) % height
            masks[i][rows[:, None], cols[None, :]] = 1.0
    return masks


def token_path_reason(adapter: FamilyAdapter, net: nn.Module, backbone: nn.Module) -> str | None:
    """None when the kept-token classifier applies to `backbone`, else why the pixel-space base
    classifier `model(x * mask)` is used instead."""
    if net is not backbone:
        return f"the backbone is a {type(backbone).__name__} wrapper around the timm network"
    reason = adapter.token_dropping(net)
    if reason is not None:
        return reason
    names = getattr(adapter, "prefix_token_names", None)
    if names is None:
        return f"{adapter.family}: the adapter names no prefix tokens"
    widths = sum(int(getattr(net, name).shape[1]) for name in names(net))
    if widths != getattr(net, "num_prefix_tokens", -1):
        return (f"{adapter.family}: prefix tokens {names(net)} hold {widths} tokens, the model "
                f"{getattr(net, 'num_prefix_tokens', None)}")
    return None


class SmoothedViT(nn.Module):
    """Ablation-voting classifier: eval mode returns votes (B, classes); train mode the logits of
    one random ablation.

    Works on any NormalizedModel-wrapped image classifier (see the module docstring for the base
    classifier). Holds the backbone and normalization buffers under the same names as
    `NormalizedModel`, so a checkpoint of either loads into the other.
    """

    backbone: nn.Module
    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(
        self, model: nn.Module, *, ablation: Ablation, size: int, stride: int, token_dropping: bool
    ):
        super().__init__()
        for name in ("backbone", "mean", "std"):
            if not isinstance(getattr(model, name, None), (nn.Module, torch.Tensor)):
                raise UnsupportedModel(
                    "smoothing ablates [0,1] pixels before the model's normalization, so it "
                    f"needs a NormalizedModel-wrapped classifier; {type(model).__name__} has no "
                    f"{name!r}"
                )
        adapter, net = adapter_for(model)
        wrapped: Any = model
        self.backbone = wrapped.backbone
        self.data_config = dict(getattr(model, "data_config", {}))
        self.register_buffer("mean", wrapped.mean.clone(), persistent=False)
        self.register_buffer("std", wrapped.std.clone(), persistent=False)
        self.ablation, self.size, self.stride = ablation, size, stride
        self.token_dropping = token_dropping
        self.family = adapter.family
        self.token_reason = token_path_reason(adapter, net, self.backbone)
        self.tokens = self.token_reason is None
        """Whether the base classifier reads the kept tokens (else: the model on ablated pixels)."""
        self.patch: tuple[int, int] | None = None
        self.prefix_names: list[str] = []
        self.pool = ""
        if self.tokens:
            self.patch = adapter.patch_size(net)
            self.prefix_names = list(adapter.prefix_token_names(net))  # type: ignore[attr-defined]
            self.pool = str(getattr(net, "global_pool", "token"))
        elif token_dropping:
            log.debug("smoothing: token dropping is not used for %s (%s); the base classifier is "
                      "the model on pixel-ablated images", type(self.backbone).__name__,
                      self.token_reason)

    def positions(self, height: int, width: int) -> list[tuple[int, int]]:
        """Every ablation position for images of this size."""
        return ablation_positions(self.ablation, height, width, self.stride)

    def base_classifier(self) -> nn.Module:
        """The plain (unablated) classifier, sharing this model's backbone."""
        return NormalizedModel(self.backbone, self.data_config or None).to(self.mean.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            height, width = x.shape[-2:]
            positions = self.positions(height, width)
            pick = int(torch.randint(len(positions), (1,)))
            return self.ablated_logits(x, positions[pick])
        return self.votes(x)

    def ablated_logits(
        self, x: torch.Tensor, position: tuple[int, int], token_dropping: bool | None = None
    ) -> torch.Tensor:
        """Logits of the base classifier on one ablation of every image (differentiable in x)."""
        height, width = x.shape[-2:]
        mask = ablation_masks(self.ablation, self.size, [position], height, width, x.device)
        return self._classify(x * mask[:, None], mask.expand(len(x), -1, -1), token_dropping)

    @torch.no_grad()
    def votes(self, x: torch.Tensor, token_dropping: bool | None = None) -> torch.Tensor:
        """Vote counts (B, classes) as floats: each ablation position votes for its top-1 class."""
        positions = self.positions(*x.shape[-2:])
        preds = torch.empty(len(positions), len(x), dtype=torch.long, device=x.device)
        classes = 0
        for part, logits in self._logit_chunks(x, token_dropping):
            preds[part] = logits.argmax(1).view(len(part), len(x))
            classes = logits.shape[-1]
        votes = torch.zeros(len(x), classes, device=x.device)
        return votes.scatter_add_(1, preds.T, torch.ones_like(preds.T, dtype=votes.dtype))

    def soft_vote(self, x: torch.Tensor) -> torch.Tensor:
        """log of the mean softmax (B, classes) of the base classifier over every ablation
        position: the differentiable counterpart of `votes` (its attack view)."""
        total: torch.Tensor | None = None
        for part, logits in self._logit_chunks(x, None):
            probs = logits.float().softmax(-1).view(len(part), len(x), -1).sum(0)
            total = probs if total is None else total + probs
        assert total is not None
        count = len(self.positions(*x.shape[-2:]))
        return (total / count).clamp_min(torch.finfo(total.dtype).tiny).log()

    @torch.no_grad()
    def logits(self, x: torch.Tensor, token_dropping: bool | None = None) -> torch.Tensor:
        """Logits (A, B, classes) of the base classifier on every ablation of every image (for
        checks on small inputs; `votes` keeps only the top-1 class of each)."""
        positions = self.positions(*x.shape[-2:])
        out: torch.Tensor | None = None
        for part, logits in self._logit_chunks(x, token_dropping):
            chunk = logits.view(len(part), len(x), -1)
            if out is None:
                out = chunk.new_empty(len(positions), len(x), chunk.shape[-1])
            out[part] = chunk
        assert out is not None
        return out

    def _logit_chunks(
        self, x: torch.Tensor, token_dropping: bool | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(ablation indices, logits (len(indices)*B, classes)) over all ablation positions,
        ablation-major; grouped by kept-token count when dropping tokens."""
        dropping = self.tokens and (self.token_dropping if token_dropping is None
                                    else token_dropping)
        height, width = x.shape[-2:]
        positions = self.positions(height, width)
        masks = ablation_masks(self.ablation, self.size, positions, height, width, x.device)
        groups = [torch.arange(len(positions), device=x.device)]
        keep = self._kept_tokens(masks) if dropping else None
        if keep is not None:
            counts = keep.sum(1)
            groups = [torch.nonzero(counts == k).flatten() for k in counts.unique()]
        for group in groups:
            per = self._ablations_per_forward(len(x), height, width, masks, keep, group)
            for part in group.split(per):
                m = masks[part]
                if keep is not None:
                    index = torch.nonzero(keep[part])[:, 1].view(len(part), -1)
                    yield part, self._encode(self._embed_kept(x, m, index), None, None)
                else:
                    images = (x[None] * m[:, None, None]).flatten(0, 1)
                    pixel_masks = m[:, None].expand(-1, len(x), -1, -1).flatten(0, 1)
                    yield part, self._classify(images, pixel_masks, drop=False)

    def _ablations_per_forward(self, batch: int, height: int, width: int, masks: torch.Tensor,
                               keep: torch.Tensor | None, group: torch.Tensor) -> int:
        """Ablations per forward: CHUNK / PIXEL_CHUNK images, fewer where the tokens (pixels)
        of that many images would exceed CHUNK_TOKENS (PIXEL_CHUNK_PIXELS)."""
        if not self.tokens:
            images = min(PIXEL_CHUNK, PIXEL_CHUNK_PIXELS // (height * width))
        else:
            vit: Any = self.backbone
            patches = (int(keep[group[0]].sum()) if keep is not None
                       else self._kept_tokens(masks[:1]).shape[1])
            tokens = patches + int(vit.num_prefix_tokens)
            images = min(CHUNK, CHUNK_TOKENS // tokens)
        return max(1, images // max(batch, 1))

    def _kept_tokens(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, tokens) bool: the patches that hold at least one retained pixel."""
        assert self.patch is not None
        pooled = nn.functional.max_pool2d(masks[:, None], self.patch, self.patch)
        return pooled.flatten(1) > 0

    def _classify(
        self, images: torch.Tensor, masks: torch.Tensor, drop: bool | None = None
    ) -> torch.Tensor:
        """Logits of ablated `images` whose retained pixels are `masks` (N, H, W)."""
        normalized = (images - self.mean) / self.std
        if not self.tokens:
            return self._logits(self.backbone(normalized))
        drop = self.token_dropping if drop is None else drop
        vit: Any = self.backbone
        tokens = vit._pos_embed(vit.patch_embed(normalized))
        prefix = vit.num_prefix_tokens
        keep = self._kept_tokens(masks)
        keep = torch.cat([keep.new_ones(len(keep), prefix), keep], 1)
        if drop:
            # same kept-token count within a call: gather them into a shorter sequence
            index = torch.nonzero(keep)[:, 1].view(len(keep), -1)
            tokens = tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
            keep, attn_mask = keep.gather(1, index), None
        else:
            attn_mask = keep[:, None, None, :]
        return self._encode(tokens, keep, attn_mask)

    def _encode(
        self, tokens: torch.Tensor, keep: torch.Tensor | None, attn_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Blocks, final norm and the model's head (avg pooling over kept patch tokens)."""
        vit: Any = self.backbone
        tokens = vit.norm_pre(vit.patch_drop(tokens))
        for block in vit.blocks:
            tokens = block(tokens, attn_mask=attn_mask) if attn_mask is not None else block(tokens)
        return self._head(vit.norm(tokens), keep)

    def _head(self, tokens: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The model's own head on encoded tokens; avg pooling averages only the kept tokens
        (`keep` (N, tokens) bool; None: all of them)."""
        vit: Any = self.backbone
        if self.pool != "avg":
            return self._logits(vit.forward_head(tokens))
        start = 0 if getattr(vit, "pool_include_prefix", False) else vit.num_prefix_tokens
        if keep is None:
            pooled = tokens[:, start:].mean(1)
        else:
            weights = keep[:, start:, None].to(tokens.dtype)
            pooled = (tokens[:, start:] * weights).sum(1) / weights.sum(1).clamp_min(1)
        return vit.head(vit.head_drop(vit.fc_norm(pooled)))

    @staticmethod
    def _logits(out: Any) -> torch.Tensor:
        """Logits of a forward: a distilled model in distillation training returns both heads,
        which inference averages."""
        if isinstance(out, tuple):
            return (out[0] + out[1]) / 2
        return out

    def _embed_kept(
        self, x: torch.Tensor, masks: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """Prefix plus kept patch tokens with position embeddings, ablation-major (A*B, P+k, D).

        Embeds only the kept patches (the stride-p convolution as a matrix product), so no
        full-size ablated image is built; `index` (A, k) lists each ablation's kept patches.
        """
        vit: Any = self.backbone
        assert self.patch is not None
        ph, pw = self.patch
        proj = vit.patch_embed.proj
        channels = x.shape[1]
        patches = nn.functional.unfold(x, self.patch, stride=self.patch).transpose(1, 2)
        pix = nn.functional.unfold(masks[:, None], self.patch, stride=self.patch).transpose(1, 2)
        pix = pix.gather(1, index[..., None].expand(-1, -1, pix.shape[-1])).repeat(1, 1, channels)
        mean = self.mean.flatten().repeat_interleave(ph * pw)
        std = self.std.flatten().repeat_interleave(ph * pw)
        kept = patches[:, index] * pix[None]  # (B, A, k, C*ph*pw)
        emb = ((kept - mean) / std).transpose(0, 1).flatten(0, 1) @ proj.weight.flatten(1).T
        emb = vit.patch_embed.norm(emb + proj.bias if proj.bias is not None else emb)
        prefix = self._prefix_tokens(len(emb))
        if vit.pos_embed is not None:
            offset = 0 if vit.no_embed_class else prefix.shape[1]
            emb = emb + vit.pos_embed[0][index.repeat_interleave(len(x), 0) + offset]
        return vit.pos_drop(torch.cat([prefix, emb], 1))

    def _prefix_tokens(self, n: int) -> torch.Tensor:
        """The prefix tokens (n, P, D) in sequence order, with their position embeddings (timm:
        none with `no_embed_class`, e.g. DINOv2 register models; else the first P entries, which
        a distilled DeiT gives the CLS and the distillation token alike)."""
        vit: Any = self.backbone
        tokens = torch.cat([getattr(vit, name) for name in self.prefix_names], 1) \
            if self.prefix_names else vit.patch_embed.proj.weight.new_zeros(1, 0, vit.embed_dim)
        if vit.pos_embed is not None and not vit.no_embed_class:
            tokens = tokens + vit.pos_embed[:, : tokens.shape[1]]
        return tokens.expand(n, -1, -1)


class SoftVoteView(nn.Module):
    """The smoothed classifier made differentiable: log of the base classifier's softmax averaged
    over every ablation position (the soft vote), so a gradient attack sees — and moves — every
    ablation at once, as the hard vote it is judged by does. Deterministic; token dropping (when
    the defense uses it) keeps it fast."""

    def __init__(self, smoothed: SmoothedViT):
        super().__init__()
        self.smoothed = smoothed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.smoothed.soft_vote(x)


@register_defense("smoothing")
@dataclass(frozen=True, kw_only=True)
class SmoothingDefense(Defense):
    """Derandomized column/block smoothing: ablations vote; certifies against patches."""

    differentiable: ClassVar[bool] = False
    ablation: Ablation = "column"
    size: Annotated[int, Field(ge=1)] = 4
    stride: Annotated[int, Field(ge=1)] = 1
    token_dropping: bool = True
    train: bool = False
    # ablation training on digits (m=5): 10 epochs at 1e-3 certify 0%, 60 at 3e-3 certify 24%
    epochs: Annotated[int, Field(ge=1)] = 60
    lr: Annotated[float, Field(gt=0)] = 3e-3

    def needs_training(self) -> bool:
        return self.train

    def apply(self, model: nn.Module) -> nn.Module:
        return SmoothedViT(
            model,
            ablation=self.ablation,
            size=self.size,
            stride=self.stride,
            token_dropping=self.token_dropping,
        )

    def attack_view(self, defended: nn.Module) -> nn.Module | None:
        if not isinstance(defended, SmoothedViT):
            raise UnsupportedModel(
                "smoothing attacks the ablations of the SmoothedViT it applied, got "
                f"{type(defended).__name__}"
            )
        return SoftVoteView(defended)
