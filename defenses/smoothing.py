"""Derandomized smoothing of a ViT against patches: column or block ablations vote
(Salman et al. 2022).

Every ablation keeps a band of `size` columns (or a `size`×`size` block), wrapping around the image,
and zeroes the other pixels in [0,1] space. The smoothed model returns the votes of all ablation
positions (stride `stride`) per class. With token dropping, only the tokens whose patch holds a
retained pixel (plus the prefix tokens) run through the encoder, after the position embeddings are
added; the reference path runs the full sequence with the dropped tokens masked out of attention,
which is the same function, so both give the same votes. See `robustbench_vit.scenarios.certify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from robustbench_vit.api import Defense, ModelLoadError, NormalizedModel, register_defense

Ablation = Literal["column", "block"]
CHUNK = 4096
"""Ablated images per forward pass (bounds memory, keeps forwards large)."""


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


class SmoothedViT(nn.Module):
    """Ablation-voting ViT: eval mode returns votes (B, classes); train mode one random ablation.

    Holds the backbone and normalization buffers under the same names as `NormalizedModel`, so a
    checkpoint of either loads into the other.
    """

    def __init__(
        self, model: nn.Module, *, ablation: Ablation, size: int, stride: int, token_dropping: bool
    ):
        super().__init__()
        for name in ("backbone", "mean", "std"):
            if not hasattr(model, name):
                raise ModelLoadError(
                    f"smoothing needs a normalized timm ViT; {type(model).__name__} has no {name!r}"
                )
        self.backbone = model.backbone
        self.data_config = dict(getattr(model, "data_config", {}))
        self.register_buffer("mean", model.mean.clone(), persistent=False)
        self.register_buffer("std", model.std.clone(), persistent=False)
        self.ablation, self.size, self.stride = ablation, size, stride
        self.token_dropping = token_dropping
        self.patch = _patch_size(self.backbone)
        self.pool = getattr(self.backbone, "global_pool", "token")
        if (
            self.pool not in ("token", "avg")
            or getattr(self.backbone, "attn_pool", None) is not None
        ):
            raise ModelLoadError(f"smoothing supports token or avg pooling, not {self.pool!r}")

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

    def ablated_logits(self, x: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
        """Logits of the base classifier on one ablation of every image (differentiable in x)."""
        mask = ablation_masks(self.ablation, self.size, [position], *x.shape[-2:], device=x.device)
        return self._classify(x * mask[:, None], mask.expand(len(x), -1, -1))

    @torch.no_grad()
    def votes(self, x: torch.Tensor, token_dropping: bool | None = None) -> torch.Tensor:
        """Vote counts (B, classes) as floats: each ablation position votes for its top-1 class."""
        dropping = self.token_dropping if token_dropping is None else token_dropping
        positions = self.positions(*x.shape[-2:])
        masks = ablation_masks(self.ablation, self.size, positions, *x.shape[-2:], device=x.device)
        # (A*B) ablated images, ablation-major; grouped by kept-token count when dropping tokens
        keep = self._kept_tokens(masks)
        groups = [torch.arange(len(positions), device=x.device)]
        if dropping:
            counts = keep.sum(1)
            groups = [torch.nonzero(counts == k).flatten() for k in counts.unique()]
        preds = torch.empty(len(positions), len(x), dtype=torch.long, device=x.device)
        per = max(1, CHUNK // max(len(x), 1))
        fast = dropping and self._fast_embed_ok()
        for group in groups:
            for part in group.split(per):
                m = masks[part]
                if fast:
                    index = torch.nonzero(keep[part])[:, 1].view(len(part), -1)
                    logits = self._encode(self._embed_kept(x, m, index), None, None)
                else:
                    images = (x[None] * m[:, None, None]).flatten(0, 1)
                    pixel_masks = m[:, None].expand(-1, len(x), -1, -1).flatten(0, 1)
                    logits = self._classify(images, pixel_masks, drop=dropping)
                preds[part] = logits.argmax(1).view(len(part), len(x))
        classes = self.backbone.num_classes
        votes = torch.zeros(len(x), classes, device=x.device)
        return votes.scatter_add_(1, preds.T, torch.ones_like(preds.T, dtype=votes.dtype))

    def _kept_tokens(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, tokens) bool: the patches that hold at least one retained pixel."""
        pooled = nn.functional.max_pool2d(masks[:, None], self.patch, self.patch)
        return pooled.flatten(1) > 0

    def _classify(
        self, images: torch.Tensor, masks: torch.Tensor, drop: bool | None = None
    ) -> torch.Tensor:
        """Logits of ablated `images` whose retained pixels are `masks` (N, H, W)."""
        drop = self.token_dropping if drop is None else drop
        vit = self.backbone
        tokens = vit._pos_embed(vit.patch_embed((images - self.mean) / self.std))
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
        """Blocks, final norm, pooling (over kept patch tokens for avg) and head."""
        vit = self.backbone
        tokens = vit.norm_pre(vit.patch_drop(tokens))
        for block in vit.blocks:
            tokens = block(tokens, attn_mask=attn_mask) if attn_mask is not None else block(tokens)
        tokens = vit.norm(tokens)
        prefix = vit.num_prefix_tokens
        if self.pool == "token":
            pooled = tokens[:, 0]
        elif keep is None:
            pooled = tokens[:, prefix:].mean(1)
        else:
            weights = keep[:, prefix:, None].to(tokens.dtype)
            pooled = (tokens[:, prefix:] * weights).sum(1) / weights.sum(1).clamp_min(1)
        return vit.head(vit.head_drop(vit.fc_norm(pooled)))

    def _fast_embed_ok(self) -> bool:
        """Whether the patch embedding is a plain stride-p convolution (then `_embed_kept`
        applies)."""
        embed = self.backbone.patch_embed
        proj = getattr(embed, "proj", None)
        return (
            isinstance(proj, nn.Conv2d)
            and proj.padding == (0, 0)
            and proj.groups == 1
            and proj.stride == (self.patch, self.patch)
            and getattr(embed, "flatten", False)
            and not getattr(self.backbone, "dynamic_img_size", False)
        )

    def _embed_kept(
        self, x: torch.Tensor, masks: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """Prefix plus kept patch tokens with position embeddings, ablation-major (A*B, 1+k, D).

        Embeds only the kept patches (the stride-p convolution as a matrix product), so no
        full-size ablated image is built; `index` (A, k) lists each ablation's kept patches.
        """
        vit, p = self.backbone, self.patch
        proj = vit.patch_embed.proj
        channels = x.shape[1]
        patches = nn.functional.unfold(x, p, stride=p).transpose(1, 2)  # (B, N, C*p*p)
        pix = nn.functional.unfold(masks[:, None], p, stride=p).transpose(1, 2)  # (A, N, p*p)
        pix = pix.gather(1, index[..., None].expand(-1, -1, pix.shape[-1])).repeat(1, 1, channels)
        mean = self.mean.flatten().repeat_interleave(p * p)
        std = self.std.flatten().repeat_interleave(p * p)
        kept = patches[:, index] * pix[None]  # (B, A, k, C*p*p)
        emb = ((kept - mean) / std).transpose(0, 1).flatten(0, 1) @ proj.weight.flatten(1).T
        emb = vit.patch_embed.norm(emb + proj.bias if proj.bias is not None else emb)
        prefix = vit.num_prefix_tokens
        pos = vit.pos_embed[0] if vit.pos_embed is not None else None
        flat_index = index.repeat_interleave(len(x), 0)
        heads = [
            t.expand(len(emb), -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None
        ]
        head = torch.cat(heads, 1) if heads else emb[:, :0]
        if pos is not None:
            offset = 0 if vit.no_embed_class else prefix
            emb = emb + pos[flat_index + offset]
            if not vit.no_embed_class:
                head = head + pos[:prefix]
        return vit.pos_drop(torch.cat([head, emb], 1))


class RandomAblationView(nn.Module):
    """The base classifier on one random ablation per forward: a differentiable attack stand-in."""

    def __init__(self, smoothed: SmoothedViT):
        super().__init__()
        self.smoothed = smoothed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = self.smoothed.positions(*x.shape[-2:])
        pick = int(torch.randint(len(positions), (1,)))
        return self.smoothed.ablated_logits(x, positions[pick])


def _patch_size(backbone: nn.Module) -> int:
    size = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    if size is None:
        raise ModelLoadError(f"{type(backbone).__name__} has no patch_embed.patch_size")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if size[0] != size[1]:
        raise ModelLoadError(f"smoothing needs square patches, got {size}")
    return int(size[0])


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
            raise TypeError(
                f"expected the SmoothedViT this defense applied, got {type(defended).__name__}"
            )
        return RandomAblationView(defended)
