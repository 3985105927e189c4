"""The built-in family adapters, one module per timm family (importing registers them)."""

from . import beit, cait, cnn, convit, eva, levit, mvitv2, pit, swin, twins, vit, xcit

__all__ = ["beit", "cait", "cnn", "convit", "eva", "levit", "mvitv2", "pit", "swin", "twins", "vit",
           "xcit"]
