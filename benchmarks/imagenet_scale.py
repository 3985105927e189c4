"""Cost of every scenario at ImageNet scale: a ViT-S/16 at 224 px, per image, with peak memory.

Writes a small ImageFolder of smooth random 224x224 PNGs in a temporary folder (10 classes, each
image nudged until the random-init `timm:vit_small_patch16_224` classifies it into its folder's
class with a logit margin of about 2, so that attacks see clean-correct, non-robust images, as on
a standard ImageNet ViT), then evaluates one suite per scenario at the settings a paper would use,
each in a child process through `evaluate_cell` (after a clean warm-up cell that builds and caches
the model), with a fresh $RBV_CACHE in the temporary folder. Per scenario it reports seconds per
image, the child's peak RSS (`wait4` ru_maxrss; on CUDA also torch's peak allocated memory) and
the hours a 1,000-image suite would take on this machine. Rows marked "fixed" are per-cell costs
that do not grow with the slice (DTA's `layer: auto` selection on 64 held-out images, the
attack-failure indicators on 10 images), measured as the difference to their base row.

A watchdog kills a child whose process tree exceeds `--max-rss-gib` (default 85 % of the memory
available at start) or `--timeout`; its row says so. Runs on CPU, and also on CUDA when
torch.cuda.is_available(). Prints a markdown table at the end (paste it into the README).

    .venv/bin/python benchmarks/imagenet_scale.py [--n 2] [--scenarios pgd,certify]
        [--devices cpu,cuda] [--timeout 900] [--max-rss-gib 19] [--list]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARCH = "timm:vit_small_patch16_224"
CLASSES = 10  # AutoAttack's APGD-T / FAB-T use 9 target classes: at least 10 classes
SUITE_IMAGES = 1000  # the projection's suite size
MARGIN = 2.0  # logit margin the generated images are nudged to
REPEATS = 3
REPEAT_BUDGET = 30.0  # seconds: repeat a cell (fastest run counts) while its runs stay short
log = logging.getLogger("imagenet_scale")


@dataclass(frozen=True, kw_only=True)
class Bench:
    """One table row: a scenario (YAML flow mapping) on one defense of one model."""

    key: str
    settings: str
    scenario: str
    defense: str = "none"
    model: str = "vit"
    n: int | None = None
    """Images evaluated (None: --n)."""
    batch_size: int | None = None
    """None: the number of images (one batch)."""
    fixed_of: str | None = None
    """A per-cell fixed cost: measured as this row minus row `fixed_of` ..."""
    fixed_images: tuple[int, int] = (1, 1)
    """... scaled by (images it runs on in a real cell, images it ran on here; 0 = n)."""
    steps_from: str | None = None
    """Project to more steps from this row and row `steps_from` (the same attack with fewer
    steps): per-step cost = difference / step difference ..."""
    steps: tuple[int, int, int] = (0, 0, 0)
    """... (steps of row `steps_from`, steps here, steps projected to)."""
    repeat: bool = True
    """False for cells whose second run would read an on-disk cache the first one wrote."""


SMOOTHING = "{{name: smoothing, ablation: column, size: 19, stride: {s}, token_dropping: {t}}}"
CERTIFY = "{kind: certify, patch_size: 32}"
PGD = "{kind: attack, name: pgd, norm: Linf, eps: 4/255, steps: 10, indicators: %s}"
PATCH_ALL = ("{kind: attack, name: patch, patch_size: 16, steps: %d, positions: all, "
             "indicators: false}")
DTA = "{kind: transfer, name: dta, source: vit, steps: 10, eps: 8/255, layer: %s}"
BENCHES: tuple[Bench, ...] = (
    Bench(key="clean", settings="clean accuracy + ECE", scenario="{kind: clean}"),
    Bench(key="pgd", settings="PGD-10 L∞ 4/255", scenario=PGD % "false"),
    Bench(key="pgd_indicators", settings="+ attack-failure indicators (10 images)",
          scenario=PGD % "true", fixed_of="pgd", fixed_images=(10, 0)),
    Bench(key="autoattack", settings="AutoAttack standard L∞ 4/255", n=1,
          scenario="{kind: attack, name: autoattack, eps: 4/255, indicators: false}"),
    Bench(key="patch_all_1", settings="patch 16x16, all 196 positions, 1 step", n=1,
          batch_size=1, scenario=PATCH_ALL % 1),
    Bench(key="patch_all", settings="patch 16x16, all 196 positions, 100 steps (from 1, 3 steps)",
          n=1, batch_size=1, scenario=PATCH_ALL % 3, steps_from="patch_all_1", steps=(1, 3, 100)),
    Bench(key="patch_random", settings="patch 16x16, 4 random positions, 100 steps", n=1,
          scenario="{kind: attack, name: patch, patch_size: 16, steps: 100, positions: random, "
                   "n_positions: 4, indicators: false}"),
    Bench(key="dta", settings="DTA 8/255, 10 steps, layer 6, 3 baselines", model="victim",
          scenario=DTA % "6"),
    Bench(key="dta_select", settings="+ layer: auto on 64 held-out images", model="victim",
          scenario=DTA % "auto, selection_examples: 2", fixed_of="dta", fixed_images=(64, 2)),
    Bench(key="compressed", settings="PGD-10 8/255 from 5 sources to int8, prune30/50/70",
          scenario="{kind: transfer, name: compressed, attack: pgd, eps: 8/255, steps: 10, "
                   "targets: [int8, prune30, prune50, prune70]}", repeat=False),
    Bench(key="corruption", settings="19 corruptions, severity 3 (generated, cold cache)",
          scenario="{kind: corruption, names: all, severity: 3}", repeat=False),
    Bench(key="shift_circular", settings="circular, max_shift 32, 5 passes",
          scenario="{kind: shift, mode: circular, max_shift: 32, passes: 5}"),
    Bench(key="shift_crop", settings="crop, max_shift 32, 5 passes",
          scenario="{kind: shift, mode: crop, max_shift: 32, passes: 5}"),
    Bench(key="layer_order", settings="10 permutations",
          scenario="{kind: layer_order, permutations: 10}"),
    Bench(key="certify_s1_drop", settings="column b=19, stride 1 (224 votes), token dropping",
          scenario=CERTIFY, defense=SMOOTHING.format(s=1, t="true")),
    Bench(key="certify_s1_full", settings="column b=19, stride 1 (224 votes), full masked",
          scenario=CERTIFY, defense=SMOOTHING.format(s=1, t="false")),
    Bench(key="certify_s10_drop", settings="column b=19, stride 10 (23 votes), token dropping",
          scenario=CERTIFY, defense=SMOOTHING.format(s=10, t="true")),
    Bench(key="certify_s10_full", settings="column b=19, stride 10 (23 votes), full masked",
          scenario=CERTIFY, defense=SMOOTHING.format(s=10, t="false")),
)

SUITE = """\
suite: imagenet_scale_{key}
seed: 0
device: {device}
data: {{dataset: imagefolder, root: "{root}", n_examples: {n}, batch_size: {batch}}}
models:
  - name: vit
    source: {arch}
    kwargs: {{num_classes: {classes}}}
    defenses: [{defense}]
{extra}scenarios:
  - {scenario}
"""

VICTIM = """\
  - name: victim                 # the DTA victim: vit fine-tuned (1 epoch, tiny lr: same labels)
    source: {arch}
    kwargs: {{num_classes: {classes}}}
    finetune: {{data: {{dataset: imagefolder, root: "{root}"}}, base: true, epochs: 1, lr: 1.0e-7}}
"""


@dataclass(frozen=True, kw_only=True)
class Measured:
    """What one child reported, plus what the parent saw of it."""

    status: str
    seconds: float = 0.0
    cpu: float = 0.0
    runs: tuple[float, ...] = ()
    n: int = 0
    rss_mib: float = 0.0
    gpu_mib: float | None = None
    result: str = ""


# ---------------------------------------------------------------- the image folder (child)


def model_config() -> Any:
    """The evaluated model exactly as the suites name it (random init, seeded by its source)."""
    from robustbench_vit.core.cells import ModelConfig

    return ModelConfig(name="vit", source=ARCH, kwargs={"num_classes": CLASSES})


def smooth_images(count: int, seed: int) -> Any:
    """(count,3,224,224) smooth random images in [0,1]: four octaves of upsampled noise."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(count, 3, 224, 224)
    for size, amp in ((4, 1.0), (8, 0.5), (16, 0.25), (32, 0.12)):
        noise = torch.randn(count, 3, size, size, generator=gen)
        x += amp * F.interpolate(noise, size=224, mode="bicubic", align_corners=False)
    return torch.sigmoid(x)


def as_model_sees(x: Any, data_config: dict[str, Any]) -> Any:
    """A differentiable stand-in for the eval transform: resize to 224/crop_pct, center crop."""
    import torch.nn.functional as F

    size = round(224 / data_config.get("crop_pct", 1.0))
    top = (size - 224) // 2
    resized = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return resized[..., top:top + 224, top:top + 224]


def nudge(model: Any, x: Any, target: Any, steps: int = 30) -> Any:
    """Signed steps of 1/255 on the pixels until `model` predicts `target` with margin MARGIN."""
    import torch

    for _ in range(steps):
        x.requires_grad_(True)
        logits = model(as_model_sees(x, model.data_config))
        other = logits.scatter(1, target[:, None], float("-inf")).amax(1)
        margin = logits.gather(1, target[:, None]).squeeze(1) - other
        if bool((margin > MARGIN).all()):
            break
        grad, = torch.autograd.grad(margin.clamp(max=MARGIN + 0.2).sum(), x)
        x = (x.detach() + grad.sign() / 255).clamp(0, 1)
    return x.detach()


def save_pngs(x: Any, labels: list[int], root: Path) -> None:
    """One PNG per image under root/class_NN/."""
    from PIL import Image

    pixels = (x.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"img_{i:03d}.png")


def relabel(model: Any, staging: Path, root: Path) -> list[int]:
    """Move every staged image to the folder of the class the model predicts for it (as
    loaded by the project's imagefolder dataset); the predicted classes."""
    import torch

    from robustbench_vit.core.registry import DATASETS

    dataset = DATASETS.get("imagefolder")(root=str(staging)).load(model.data_config)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    for (path, _), label in zip(dataset.samples, pred, strict=True):
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(path, folder / Path(path).name)
    return pred


def make_image_folder(root: Path, count: int) -> None:
    """`count` images (at least one per class) that the evaluated model gets right."""
    import torch

    from robustbench_vit.core.plugins import load_plugins
    from robustbench_vit.models.sources import build_model

    load_plugins()
    model = build_model(model_config(), "cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    labels = [i % CLASSES for i in range(max(count, CLASSES))]
    x = nudge(model, smooth_images(len(labels), seed=0), torch.tensor(labels))
    staging = root.parent / "staging"
    save_pngs(x, labels, staging)
    pred = relabel(model, staging, root)
    missing = sorted(set(range(CLASSES)) - set(pred))
    if missing:  # an empty class folder would shift every later label
        raise SystemExit(f"no generated image is classified as class {missing}")
    log.info("image folder: %d images, predicted classes %s (%d match their target)",
             len(pred), pred, sum(p == t for p, t in zip(pred, labels, strict=True)))


# ---------------------------------------------------------------- one cell (child)


def warm_up(cell: Any) -> None:
    """Build and cache the cell's model and its references (and their kernels) with a clean
    cell of the undefended model: model building and fine-tuning stay out of the timing."""
    from robustbench_vit.execution.evaluate import evaluate_cell

    for model in (cell.model, *cell.references.values()):
        clean = dataclasses.replace(cell, model=model, defense="none", defense_params={},
                                    scenario_kind="clean", scenario_params={},
                                    scenario_options={}, references={})
        result = evaluate_cell(clean)
        if result.status != "ok":
            raise SystemExit(f"warm-up of {model.name} failed: {result.error}")


def summary(measurements: list[Any]) -> str:
    """A few of the cell's numbers, as text."""
    parts = []
    for m in measurements[:3]:
        extra = ",".join(f"{v}" for k, v in sorted(m.extra.items()) if k in ("method", "target"))
        parts.append(f"{m.metric}{'[' + extra + ']' if extra else ''}={m.value:.2f}/{m.n}")
    return " ".join(parts)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children so far."""
    own, kids = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_cell(suite_path: Path, model_name: str, repeats: int) -> dict[str, Any]:
    """Evaluate the suite's one cell of `model_name` after a warm-up, up to `repeats` times
    while the runs stay short (REPEAT_BUDGET s); the fastest run's timing and numbers."""
    import torch

    from robustbench_vit.config.load import load_suite
    from robustbench_vit.execution.evaluate import evaluate_cell

    cells = [c for c in load_suite(suite_path).cells() if c.model.name == model_name]
    if len(cells) != 1:
        raise SystemExit(f"{suite_path}: expected one cell of {model_name}, got {len(cells)}")
    cell = cells[0]
    warm_up(cell)
    cuda = cell.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs: list[tuple[float, float, Any]] = []
    while len(runs) < repeats and sum(r[0] for r in runs) < REPEAT_BUDGET:
        cpu = cpu_seconds()
        result = evaluate_cell(cell)
        if cuda:
            torch.cuda.synchronize()
        runs.append((result.seconds, cpu_seconds() - cpu, result))
        if result.status != "ok":
            break
    wall, cpu, result = min(runs, key=lambda r: r[0])
    return {"status": result.status, "seconds": wall, "cpu": cpu, "n": cell.data.n_examples,
            "runs": [round(r[0], 2) for r in runs],
            "result": summary(result.measurements) if result.status == "ok"
            else (result.error or "").strip().splitlines()[-1][:200],
            "gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


# ---------------------------------------------------------------- the parent


def suite_text(bench: Bench, root: Path, n: int, device: str) -> str:
    """The suite YAML of one row."""
    fields = {"arch": ARCH, "classes": CLASSES, "root": root.as_posix()}
    extra = VICTIM.format(**fields) if bench.model == "victim" else ""
    return SUITE.format(key=bench.key, device=device, n=n, batch=bench.batch_size or n,
                        defense=bench.defense, extra=extra, scenario=bench.scenario, **fields)


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            parents[int(entry.name)] = int(fields[1])
            rss[int(entry.name)] = int(fields[21]) * page
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(p, 0) for p in tree)


def watch(proc: subprocess.Popen, limit_bytes: int, timeout: float, why: list[str]) -> None:
    """Kill the child's process group when its tree's RSS passes `limit_bytes` or it runs out
    of time; the reason goes into `why`."""
    start = time.monotonic()
    while proc.poll() is None:
        reason = None
        if time.monotonic() - start > timeout:
            reason = f"timeout after {timeout:.0f} s"
        elif tree_rss(proc.pid) > limit_bytes:
            reason = f"killed above {limit_bytes / 2**30:.1f} GiB RSS"
        if reason:
            why.append(reason)
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.25)


def run_child(args: list[str], env: dict[str, str], limit_bytes: int,
              timeout: float) -> tuple[int, float, str, list[str]]:
    """(exit status, peak RSS MiB of the child and its waited-for children, stderr tail, kill
    reasons) of `python this_file ARGS` in its own process group."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, *args], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        why: list[str] = []
        watcher = threading.Thread(target=watch, args=(proc, limit_bytes, timeout, why),
                                   daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        watcher.join()
        err.seek(0)
        tail = err.read()[-3000:]
    return proc.returncode, usage.ru_maxrss / 1024, tail, why


def measure(bench: Bench, root: Path, n: int, device: str, env: dict[str, str],
            limit_bytes: int, timeout: float) -> Measured:
    """Run one row's suite in a child process."""
    folder = root.parent / "suites"
    folder.mkdir(exist_ok=True)
    suite = folder / f"{bench.key}_{device.replace(':', '')}.yaml"
    suite.write_text(suite_text(bench, root, bench.n or n, device))
    out = folder / f"{suite.stem}.json"
    code, rss, tail, why = run_child(["--child-cell", str(suite), bench.model, str(out),
                                      str(REPEATS if bench.repeat else 1)], env,
                                     limit_bytes, timeout)
    if why or code != 0 or not out.exists():
        last = tail.strip().splitlines()[-1][:200] if tail.strip() else f"exit {code}"
        return Measured(status="failed", rss_mib=rss, result="; ".join(why) or last)
    data = json.loads(out.read_text())
    return Measured(status=data["status"], seconds=data["seconds"], cpu=data["cpu"],
                    runs=tuple(data["runs"]), n=data["n"], rss_mib=rss, gpu_mib=data["gpu_mib"],
                    result=data["result"])


def fixed_seconds(bench: Bench, row: Measured, base: Measured | None) -> float | None:
    """A fixed-cost row's seconds per cell at full size (None when its base did not run)."""
    if base is None or base.status != "ok" or row.status != "ok":
        return None
    full, here = bench.fixed_images
    return max(0.0, row.seconds - base.seconds) * full / (here or row.n)


def projected_steps(bench: Bench, row: Measured, base: Measured | None) -> tuple[float, float]:
    """(wall, CPU) seconds per image at the projected number of steps."""
    if base is None or base.status != "ok":
        return float("nan"), float("nan")
    low, here, target = bench.steps
    extra = (target - here) / (here - low)
    return tuple((t + (t - b) * extra) / row.n  # type: ignore[return-value]
                 for t, b in ((row.seconds, base.seconds), (row.cpu, base.cpu)))


def duration(seconds: float) -> str:
    """"12 s", "3.5 min" or "1.2 h"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def costs(bench: Bench, row: Measured, rows: dict[str, Measured]) -> tuple[str, str, str]:
    """(wall s/image, CPU s/image, projected hours) of one row, as text."""
    if row.status != "ok":
        return "—", "—", "—"
    if bench.fixed_of:
        fixed = fixed_seconds(bench, row, rows.get(bench.fixed_of))
        return "fixed", "—", f"+{duration(fixed)} per cell" if fixed is not None else "—"
    if bench.steps_from:
        per, cpu = projected_steps(bench, row, rows.get(bench.steps_from))
    else:
        per, cpu = row.seconds / row.n, row.cpu / row.n
    hours = per * SUITE_IMAGES / 3600
    return f"{per:.2f}", f"{cpu:.2f}", f"{hours:.2f}" if hours < 10 else f"{hours:,.0f}"


def table(benches: list[Bench], rows: dict[str, Measured], device: str) -> str:
    """The markdown table of one device."""
    gpu = device.startswith("cuda")
    head = ["scenario", "settings", "images", "s/image", "CPU s/image", "peak RSS MiB",
            *(["peak GPU MiB"] if gpu else []), f"{SUITE_IMAGES:,} images (h)", "result / note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench in benches:
        row = rows[bench.key]
        gpu_cell = [f"{row.gpu_mib:,.0f}" if row.gpu_mib is not None else "—"] if gpu else []
        note = row.result if row.status == "ok" else f"{row.status}: {row.result}"
        lines.append("| " + " | ".join([bench.key, bench.settings, str(row.n or "—"),
                                        *costs(bench, row, rows)[:2], f"{row.rss_mib:,.0f}",
                                        *gpu_cell, costs(bench, row, rows)[2],
                                        note.replace("|", "/")]) + " |")
    return "\n".join(lines)


def selected(spec: str | None) -> list[Bench]:
    """The rows whose key starts with one of the comma-separated names (all by default); a
    fixed-cost row brings its base row."""
    if not spec:
        return list(BENCHES)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    keys = {b.key for b in BENCHES if any(b.key.startswith(name) for name in names)}
    keys |= {base for b in BENCHES if b.key in keys for base in (b.fixed_of, b.steps_from)
             if base}
    if not keys:
        raise SystemExit(f"no scenario matches {spec!r}; --list shows them")
    return [b for b in BENCHES if b.key in keys]


def devices(spec: str | None) -> list[str]:
    """cpu, and cuda when torch sees a GPU (or --devices)."""
    if spec:
        return [d.strip() for d in spec.split(",") if d.strip()]
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def default_limit_gib() -> float:
    """85 % of the memory available now."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return 0.85 * int(line.split()[1]) / 2**20
    return 16.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2,
                        help="images per scenario (rows that set their own keep theirs)")
    parser.add_argument("--scenarios", help="comma-separated row names or prefixes (--list)")
    parser.add_argument("--devices", help="comma-separated devices (default cpu, + cuda)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per row")
    parser.add_argument("--max-rss-gib", type=float, default=None,
                        help="kill a row's processes above this RSS (default 85%% of available)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--child-data", nargs=2, metavar=("ROOT", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--child-cell", nargs=4, metavar=("SUITE", "MODEL", "OUT", "REPEATS"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child(args: argparse.Namespace) -> None:
    """The child-process modes: make the image folder, or evaluate one cell."""
    if args.child_data:
        make_image_folder(Path(args.child_data[0]), int(args.child_data[1]))
        return
    suite, model, out, repeats = args.child_cell
    Path(out).write_text(json.dumps(run_cell(Path(suite), model, int(repeats))))


def run_all(args: argparse.Namespace, benches: list[Bench]) -> None:
    """Make the data, measure every row on every device, print the tables."""
    limit = int((args.max_rss_gib or default_limit_gib()) * 2**30)
    started, load = time.perf_counter(), os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        log.warning("load average %.1f on %d CPUs: other processes will inflate the timings",
                    load, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="rbv-imagenet-scale-") as tmp:
        root = Path(tmp) / "images"
        env = {**os.environ, "RBV_CACHE": str(Path(tmp) / "cache")}
        count = max(CLASSES, args.n + 8)  # the slice plus held-out images for DTA's selection
        code, _, tail, why = run_child(["--child-data", str(root), str(count)], env, limit,
                                       args.timeout)
        if code != 0:
            raise SystemExit(f"making the image folder failed: {why or tail}")
        tables = []
        for device in devices(args.devices):
            rows: dict[str, Measured] = {}
            for bench in benches:
                rows[bench.key] = measure(bench, root, args.n, device, env, limit, args.timeout)
                row = rows[bench.key]
                log.info("%-17s %-6s %-7s %7.1f s (runs %s, CPU %.1f s)  %6.0f MiB  %s",
                         bench.key, device, row.status, row.seconds, list(row.runs), row.cpu,
                         row.rss_mib, row.result)
            tables.append(f"### {device}\n\n{table(benches, rows, device)}")
    minutes = (time.perf_counter() - started) / 60
    print(f"\nViT-S/16 ({ARCH}, random init, {CLASSES} classes) at 224 px; {os.cpu_count()} "
          f"CPUs (load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end); --n "
          f"{args.n}; total {minutes:.1f} min\n")
    print("\n\n".join(tables))


def main(argv: list[str] | None = None) -> None:
    """Dispatch: the child modes, --list, or the whole benchmark."""
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.child_data or args.child_cell:
        child(args)
        return
    benches = selected(args.scenarios)
    if args.list:
        for bench in benches:
            print(f"{bench.key:18} {bench.settings}")
        return
    run_all(args, benches)


if __name__ == "__main__":
    main()
