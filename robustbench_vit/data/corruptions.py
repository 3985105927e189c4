"""ImageNet-C corruptions (imagecorruptions 1.1.2), made to run on today's numpy/skimage/setuptools.

imagecorruptions is used as released, not forked. On first use (never at `import robustbench_vit`)
it is imported under two import shims, and six small patches go into the namespace of its module
`imagecorruptions.corruptions`; its functions are untouched and look the patched names up at call
time, so `imagecorruptions.corrupt` benefits too:

1. `pkg_resources` (gone in setuptools 81) is imported at module level for `resource_filename`,
   which finds the bundled frost photographs. Where it is missing, a stand-in module with only
   `resource_filename` (importlib.resources) sits in sys.modules during that import, then goes.
2. `scipy.ndimage.interpolation` (deprecated, gone in SciPy 2.0) is shimmed the same way from
   `scipy.ndimage`; its deprecation warning (and pkg_resources') is silenced during the import.
3. fog: `np.float_` (gone in numpy 2) -> the module's `np` is numpy plus `float_ = float64`.
4. gaussian_blur, glass_blur: `gaussian(..., multichannel=True)` (gone in scikit-image 0.19)
   -> the module's `gaussian` translates it to `channel_axis=-1`.
5. impulse_noise: `skimage.util.random_noise` draws from its own unseeded Generator since
   scikit-image 0.19, ignoring np.random.seed -> its rng is seeded from numpy's global state.
6. frost (speed only): the module's `cv2.imread` keeps the decoded frost photographs (read-only):
   a 32x32 frost costs ~1 ms instead of ~5 ms.

Speed: seven corruptions (glass_blur, zoom_blur, motion_blur, snow, brightness, saturate,
elastic_transform) run compiled kernels (`corruption_kernels`, numba) that give the reference's
arrays bit for bit -- glass_blur ~100x faster at 224 px; each is checked against imagecorruptions
at first use and is not used where it differs. `reference=True` runs imagecorruptions itself.

`corrupt_image` repairs the outputs: spatter divides 0/0 when no liquid survives its threshold
(small images, severity 1-3) and returns NaN channels -> those pixels keep their clean value (there
is no spatter there). Float outputs are clipped and cast to uint8 by truncation, as
`imagecorruptions.corrupt` does; PIL-backed (read-only) outputs are copied. Checked: all 19 keep the
shape of 8x8, 16x16, 32x32, 33x47 and 224x224 RGB inputs at every severity (a plugin corruption
returning another size or grayscale is resized back). motion_blur in 1.1.2 is pure numpy (no
Wand/ImageMagick); frost scales its photographs to 1.1x the input before cropping: any size works.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.resources
import importlib.util
import inspect
import logging
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import MissingDependencyError
from ..core.registry import CORRUPTIONS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BENCHMARK: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
"""The 15 corruptions of mCE, in ImageNet-C order."""
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The 4 held-out corruptions: reported, not part of mCE."""
ALL: tuple[str, ...] = BENCHMARK + EXTRA
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
COMPAT_VERSION = 1
"""Bumped whenever a patch here can change corrupted pixels (part of `library_versions`)."""

_DESCRIPTIONS = {
    "gaussian_noise": "Additive Gaussian noise on every pixel",
    "shot_noise": "Poisson (photon shot) noise",
    "impulse_noise": "Salt-and-pepper impulse noise",
    "defocus_blur": "Blur with an anti-aliased disk kernel, like an out-of-focus lens",
    "glass_blur": "Gaussian blur with locally shuffled pixels, like frosted glass",
    "motion_blur": "Linear motion blur at a random angle",
    "zoom_blur": "Average of centre zooms, like a camera moving towards the scene",
    "snow": "Motion-blurred snowflakes over a whitened scene",
    "frost": "A random crop of a frost photograph blended over the image",
    "fog": "Plasma-fractal fog with lowered contrast",
    "brightness": "Raised brightness (HSV value)",
    "contrast": "Lowered contrast towards the per-channel mean",
    "elastic_transform": "Smooth random elastic displacement of the pixels",
    "pixelate": "Box downsampling then nearest upsampling (blocky pixels)",
    "jpeg_compression": "JPEG compression artifacts at low quality",
    "speckle_noise": "Multiplicative Gaussian (speckle) noise",
    "gaussian_blur": "Gaussian blur",
    "spatter": "Water or mud spatter occluding parts of the image",
    "saturate": "Changed colour saturation (HSV saturation)",
}
RANDOM: frozenset[str] = frozenset({
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur",
    "snow", "frost", "fog", "elastic_transform", "spatter",
})
"""Corruptions that draw random numbers (the others ignore the seed)."""

_LOCK = threading.RLock()  # numpy's global RandomState is shared: one seeded corruption at a time
_ABSENT = object()


# --- import shims ---------------------------------------------------------------------------------


def resource_filename(package_or_requirement: str, resource_name: str) -> str:
    """The path of `resource_name` beside module `package_or_requirement`, as pkg_resources'."""
    module = importlib.import_module(package_or_requirement)
    package = package_or_requirement if hasattr(module, "__path__") else module.__package__
    if package is None:
        raise ImportError(f"{package_or_requirement} is not in a package: no resources beside it")
    return str(importlib.resources.files(package).joinpath(resource_name))


def _pkg_resources_shim() -> types.ModuleType:
    shim = types.ModuleType("pkg_resources", "robustbench_vit stand-in: resource_filename only.")
    shim.resource_filename = resource_filename  # type: ignore[attr-defined]
    return shim


def _ndimage_interpolation_shim() -> types.ModuleType:
    from scipy import ndimage

    shim = types.ModuleType("scipy.ndimage.interpolation", "robustbench_vit stand-in.")
    shim.map_coordinates = ndimage.map_coordinates  # type: ignore[attr-defined]
    shim.zoom = ndimage.zoom  # type: ignore[attr-defined]
    return shim


SHIMS: dict[str, Callable[[], types.ModuleType]] = {
    "pkg_resources": _pkg_resources_shim,
    "scipy.ndimage.interpolation": _ndimage_interpolation_shim,
}


def _is_available(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None  # None: imports of it are blocked
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def import_shims() -> Iterator[list[str]]:
    """Put stand-ins for the missing modules of SHIMS in sys.modules for the block, then restore."""
    saved: dict[str, Any] = {}
    for name, build in SHIMS.items():
        if not _is_available(name):
            saved[name] = sys.modules.get(name, _ABSENT)
            sys.modules[name] = build()
    try:
        yield list(saved)
    finally:
        for name, previous in saved.items():
            if previous is _ABSENT:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


# --- patches of imagecorruptions.corruptions' namespace -------------------------------------------


class _Namespace:
    """A module seen through `overrides`: attributes not overridden come from `target`."""

    def __init__(self, target: Any, **overrides: Any):
        self.__wrapped__ = target
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)


def _accept_multichannel(gaussian: Callable[..., Any]) -> Callable[..., Any]:
    """skimage's `gaussian` also taking the removed `multichannel=` (True is channel_axis=-1)."""

    @functools.wraps(gaussian)
    def wrapper(image: Any, *args: Any, multichannel: bool | None = None, **kwargs: Any) -> Any:
        if multichannel is not None:
            kwargs.setdefault("channel_axis", -1 if multichannel else None)
        return gaussian(image, *args, **kwargs)

    return wrapper


def _seeded_from_global_rng(random_noise: Callable[..., Any]) -> Callable[..., Any]:
    """skimage's `random_noise` whose rng, when not given, is seeded from numpy's global state."""
    key = "rng" if "rng" in inspect.signature(random_noise).parameters else "seed"

    @functools.wraps(random_noise)
    def wrapper(image: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get(key) is None:
            kwargs[key] = int(np.random.randint(0, 2**32, dtype=np.uint64))
        return random_noise(image, *args, **kwargs)

    return wrapper


def _cached_imread(imread: Callable[..., Any]) -> Callable[..., Any]:
    """cv2.imread decoding each file once; the arrays it returns are read-only."""

    @functools.lru_cache(maxsize=16)
    def cached(filename: str, *args: Any) -> Any:
        image = imread(filename, *args)
        if image is not None:
            image.flags.writeable = False
        return image

    return cached


def patch_module(module: types.ModuleType) -> None:
    """Apply the compat patches to the namespace of `imagecorruptions.corruptions`; idempotent."""
    if getattr(module, "_rbv_patched", False):
        return
    if not hasattr(np, "float_"):
        module.np = _Namespace(np, float_=np.float64)  # type: ignore[attr-defined]
    if "multichannel" not in inspect.signature(module.gaussian).parameters:
        module.gaussian = _accept_multichannel(module.gaussian)  # type: ignore[attr-defined]
    cv2, sk = module.cv2, module.sk
    module.cv2 = _Namespace(cv2, imread=_cached_imread(cv2.imread))  # type: ignore[attr-defined]
    util = _Namespace(sk.util, random_noise=_seeded_from_global_rng(sk.util.random_noise))
    module.sk = _Namespace(sk, util=util)  # type: ignore[attr-defined]
    module._rbv_patched = True  # type: ignore[attr-defined]


@functools.cache
def load_imagecorruptions() -> types.ModuleType:
    """`imagecorruptions.corruptions`, imported under the shims and patched (once, at first use)."""
    with _LOCK:
        try:
            with import_shims() as shimmed, warnings.catch_warnings():
                warnings.filterwarnings("ignore", r".*scipy\.ndimage\.interpolation")
                warnings.filterwarnings("ignore", r"pkg_resources is deprecated")
                module = importlib.import_module("imagecorruptions.corruptions")
        except ImportError as exc:
            raise MissingDependencyError(
                f"corruptions need imagecorruptions>=1.1.2,<1.2 and its dependencies ({exc}); "
                "run `make setup` or pip install 'imagecorruptions>=1.1.2,<1.2'") from exc
        patch_module(module)
    log.debug("imported imagecorruptions (shimmed: %s)", ", ".join(shimmed) or "none")
    return module


def library_versions() -> dict[str, str]:
    """Versions of the packages whose changes can move corrupted pixels (for cache keys)."""
    found = {"compat": str(COMPAT_VERSION)}
    for package in ("imagecorruptions", "numpy", "scipy", "scikit-image", "pillow",
                    "opencv-python", "opencv-python-headless"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


# --- the corruptions ------------------------------------------------------------------------------


@contextlib.contextmanager
def global_numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RandomState for the block and restore its previous state afterwards."""
    with _LOCK:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


MIN_KERNEL_SIDE = 8
"""Smaller images (either side) always run the reference (its squeezes and breaks differ there)."""
_PROBE_SHAPE = (20, 28, 3)


@dataclass(frozen=True, kw_only=True)
class Corruption:
    """An imagecorruptions corruption: `(uint8 HxWx3 image, severity, seed) -> array`.

    Where `corruption_kernels` has a compiled kernel for it (and it passed its first-use check),
    that runs; `reference=True` runs imagecorruptions itself. Both give the same array.
    """

    name: str
    random: bool

    def __call__(self, image: np.ndarray, severity: int, seed: int, *,
                 reference: bool = False) -> np.ndarray:
        from PIL import Image

        module = load_imagecorruptions()
        kernel = None if reference or min(image.shape[:2]) < MIN_KERNEL_SIDE \
            else checked_kernel(self.name)
        with global_numpy_seed(seed):
            if kernel is not None:
                return np.asarray(kernel(module, image, severity))
            return np.asarray(getattr(module, self.name)(Image.fromarray(image), severity))


@functools.cache
def checked_kernel(name: str) -> Callable[..., np.ndarray] | None:
    """The compiled kernel of `name` if it reproduces the reference on a probe image, else None.

    Checked once per process, every severity, on a non-square random image: a library update that
    changes the reference's arithmetic turns the kernel off (with a warning), never the numbers.
    """
    from . import corruption_kernels

    kernel = corruption_kernels.KERNELS.get(name)
    if kernel is None or not corruption_kernels.HAVE_NUMBA:
        return None
    from PIL import Image

    module = load_imagecorruptions()
    probe = np.random.default_rng(20261203).integers(0, 256, _PROBE_SHAPE, dtype=np.uint8)
    for severity in SEVERITIES:
        with global_numpy_seed(severity):
            fast = np.asarray(kernel(module, probe, severity))
        with global_numpy_seed(severity):
            expected = np.asarray(getattr(module, name)(Image.fromarray(probe), severity))
        if fast.shape != expected.shape or not np.array_equal(fast, expected, equal_nan=True):
            log.warning("the compiled %s differs from imagecorruptions %s here (severity %d): "
                        "running the reference", name, library_versions().get(
                            "imagecorruptions", "?"), severity)
            return None
    return kernel


for _name in ALL:
    CORRUPTIONS.register(_name, Corruption(name=_name, random=_name in RANDOM),
                         description=_DESCRIPTIONS[_name], benchmark=_name in BENCHMARK)


def corrupt_image(image: np.ndarray, name: str, severity: int, seed: int, *,
                  reference: bool = False) -> np.ndarray:
    """Corrupt one uint8 HxWx3 image at severity 1..5; the same seed gives the same image.

    `reference=True` runs imagecorruptions' own code even where a compiled kernel exists (same
    output, slower: for checks and benchmarks).
    """
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        got = f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
        raise ValueError(f"expected a uint8 HxWx3 array, got {got}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of 1..5, got {severity!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    corruption = CORRUPTIONS.get(name)
    with np.errstate(invalid="ignore"):  # spatter's 0/0 (repaired below)
        if isinstance(corruption, Corruption):
            out = np.asarray(corruption(np.ascontiguousarray(image), severity, seed,
                                        reference=reference))
        else:  # a plugin corruption: (image, severity, seed) -> array
            out = np.asarray(corruption(np.ascontiguousarray(image), severity, seed))
    return _as_image_like(out, image)


def _as_image_like(out: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """`out` as a writable uint8 array shaped like `clean`: NaN -> clean pixel, clip, truncate."""
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    if out.shape[:2] != clean.shape[:2]:
        log.debug("corruption output %s resized back to %s", out.shape, clean.shape)
        out = _resize(out, clean.shape[:2])
    if out.dtype != np.uint8:
        out = out.astype(np.float64)
        out = np.where(np.isnan(out), clean, out)
        out = np.clip(out, 0, 255).astype(np.uint8)
    return out if out.flags.writeable else out.copy()  # PIL-backed outputs are read-only views


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    clipped = np.clip(np.nan_to_num(image.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(clipped).resize(size[::-1], Image.Resampling.BILINEAR))


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` of a data set corrupted with `seed` (independent of batching)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def corrupt_batch(x: torch.Tensor, name: str, severity: int, seed: int, *,
                  start: int = 0) -> torch.Tensor:
    """Corrupt an (N,3,H,W) batch in [0,1]; image i uses image_seed(seed, start + i)."""
    import torch

    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"expected a float (N,3,H,W) batch, got {x.dtype} {tuple(x.shape)}")
    if seed < 0 or start < 0:
        raise ValueError(f"seed and start must be >= 0, got {seed} and {start}")
    images = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    images_np = images.permute(0, 2, 3, 1).cpu().numpy()
    out = [corrupt_image(img, name, severity, image_seed(seed, start + i))
           for i, img in enumerate(images_np)]
    if not out:
        return x.detach().clone()
    result = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (result.to(device=x.device, dtype=torch.float32) / 255).to(x.dtype)
