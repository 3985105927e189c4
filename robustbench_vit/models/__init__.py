"""Layer 1 — models: sources (timm, file, zoo), the zoo of recipes and its training, fine-tuning
schemes, defended (fine-tuned) checkpoints, compression, the EOT wrapper, ViT introspection."""
