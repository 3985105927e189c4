"""A suite that needs no training: a random-init timm ViT on seeded synthetic images (seconds)."""

TINY_SUITE = """\
# no training: a random-init timm ViT on seeded synthetic images
suite: tiny
device: cpu
data: {dataset: synthetic, size: 32, image_size: 32, batch_size: 16}
models:
  - name: vit
    source: timm:vit_tiny_patch16_224
    kwargs: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, num_classes: 10}
scenarios:
  - {kind: clean}
  - {kind: attack, name: pgd, steps: 2, sweep: {eps: [1/255, 8/255]}}
"""
