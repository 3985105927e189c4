"""Hostile data (issue 17, findings 2, 3 and 9): image-folder links that loop or climb out of the
data root, 16-bit PNGs, truncated JPEGs; pool workers orphaned by a `kill -9`; damaged entries of
the corrupted-images cache.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_vit.core.errors import DataError
from robustbench_vit.data import corruption_cache as corrupted
from robustbench_vit.data.datasets import ImageFolderData, ImageNetC

REPO = Path(__file__).resolve().parents[1]
SHADES = {"a": 40, "b": 200}
"""Class -> pixel value of its images (so an image's label can be checked from its pixels)."""


def image_tree(root: Path, per_class: int = 4) -> Path:
    """root/a and root/b, `per_class` 8x8 PNGs each, every pixel of a class at its shade."""
    for label, shade in SHADES.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((8, 8, 3), shade + i, np.uint8)
            Image.fromarray(pixels).save(root / label / f"img{i}.png")
    return root


def listing(root: Path, timeout: float = 120) -> dict[str, object]:
    """{"labels": [...], "shades": [...], "seconds": s} of imagefolder `root` loaded in a child
    process (killed after `timeout` s: a listing that hangs fails, it does not stall the suite);
    `seconds` is the loading time alone, imports excluded."""
    script = textwrap.dedent("""\
        import json, sys, time
        from robustbench_vit.data.datasets import ImageFolderData
        start = time.perf_counter()
        data = ImageFolderData(root=sys.argv[1]).load(None)
        items = [data[i] for i in range(len(data))]
        print(json.dumps({"labels": [int(y) for _, y in items],
                          "shades": [round(float(x.mean()) * 255) for x, _ in items],
                          "seconds": time.perf_counter() - start}))
        """)
    try:
        done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"listing {root} took over {timeout} s")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


# --- image folders: links -------------------------------------------------------------------------

@pytest.mark.parametrize("links", [
    {"a/up": ".."},                                   # 8 images became 328, 160 mislabelled
    {"a/up": "..", "b/up": "..", "a/self": "."},      # several loops: hung for over 5 minutes
    {"a/out": "../../elsewhere", "b/deep/top": "../../.."},
], ids=["up", "loops", "outside"])
def test_links_to_folders_inside_class_folders_add_no_images(tmp_path: Path,
                                                             links: dict[str, str]) -> None:
    root = image_tree(tmp_path / "data" / "val")
    image_tree(tmp_path / "data" / "elsewhere")  # images outside the root, reachable by a link
    for link, target in links.items():
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        (root / link).symlink_to(target, target_is_directory=True)
    got = listing(root)
    assert got["labels"] == [0] * 4 + [1] * 4
    assert got["shades"] == [40, 41, 42, 43, 200, 201, 202, 203]
    assert float(got["seconds"]) < 10  # type: ignore[arg-type]


def test_a_class_folder_that_links_to_a_folder_elsewhere_is_read(tmp_path: Path) -> None:
    """A subset made of links (class folders, or single images) reads the linked images."""
    image_tree(tmp_path / "full")
    root = tmp_path / "subset"
    (root / "b").mkdir(parents=True)
    (root / "a").symlink_to(tmp_path / "full" / "a", target_is_directory=True)
    (root / "b" / "one.png").symlink_to(tmp_path / "full" / "b" / "img1.png")
    data = ImageFolderData(root=str(root)).load(None)
    assert [int(y) for _, y in data] == [0, 0, 0, 0, 1]  # type: ignore[attr-defined]
    assert round(float(data[4][0].mean()) * 255) == 201


@pytest.mark.parametrize(("link", "target", "message"), [
    ("c", "c", "'c' is a link that loops"),
    ("c", "d", "'c' is a link that loops"),           # with d -> c below
    ("c", ".", "'c' is a link to the data root or a folder above it"),
    ("c", "..", "'c' is a link to the data root or a folder above it"),
    ("c", "a", "class folders 'a' and 'c' hold the same images"),
    ("c", "a/inner", "class folders 'a' and 'c' hold the same images"),
])
def test_an_unsafe_class_folder_link_is_reported(tmp_path: Path, link: str, target: str,
                                                 message: str) -> None:
    root = image_tree(tmp_path / "val")
    image_tree(root / "a" / "inner")
    if target == "d":
        (root / "d").symlink_to("c", target_is_directory=True)
    (root / link).symlink_to(target, target_is_directory=True)
    with pytest.raises(DataError) as caught:
        ImageFolderData(root=str(root)).load(None)
    assert str(caught.value).startswith(f"imagefolder: {root}: ") and message in str(caught.value)
    with pytest.raises(DataError, match=message):
        ImageFolderData(root=str(root)).num_classes()


def test_imagenet_c_folders_follow_the_same_rules(tmp_path: Path) -> None:
    folder = image_tree(tmp_path / "fog" / "3")
    (folder / "a" / "up").symlink_to("..", target_is_directory=True)
    data = ImageNetC(root=str(tmp_path), corruption="fog", severity=3, image_size=8).load(None)
    assert len(data) == 8  # type: ignore[arg-type]
    (folder / "loop").symlink_to("loop", target_is_directory=True)
    with pytest.raises(DataError, match="'loop' is a link that loops"):
        ImageNetC(root=str(tmp_path), corruption="fog", severity=3, image_size=8).load(None)


def test_two_images_with_one_name_are_reported(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "val")
    Image.new("RGB", (8, 8)).save(root / "a" / "img0.jpg")
    with pytest.raises(DataError, match="a/img0.jpg and a/img0.png share the name a/img0"):
        ImageFolderData(root=str(root)).load(None)


# --- image files: 16 bits, truncated ------------------------------------------------------------

VALUES_16 = [0, 257 * 64, 257 * 128, 65535, 1000, 30000]


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "val")
    grey = np.array([VALUES_16] * 4, np.uint16)  # 4 rows of 6 known values
    Image.fromarray(grey).save(root / "a" / "deep.png")
    assert Image.open(root / "a" / "deep.png").mode.startswith("I")  # a real 16-bit file
    data = ImageFolderData(root=str(root)).load(None)
    x, y = data[0]  # a/deep.png sorts first
    assert int(y) == 0 and x.shape == (3, 4, 6)
    expected = torch.tensor([round(v / 257) / 255 for v in VALUES_16])
    for channel in x:
        for row in channel:
            assert torch.allclose(row, expected, atol=1e-6), row


def test_an_undecodable_image_is_an_error_naming_it(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "val")
    (root / "b" / "note.png").write_text("not an image")
    data = ImageFolderData(root=str(root)).load(None)
    assert len(data) == 9  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"val: b/note\.png: cannot read the image"):
        data[8]  # b/img0..3, then b/note


TINY_SUITE = """\
suite: hostile_data
device: cpu
data: {{dataset: imagefolder, root: {root}, batch_size: 4}}
models:
  - name: vit
    source: timm:vit_tiny_patch16_224
    kwargs: {{img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2, num_classes: 2}}
scenarios:
  - {{kind: clean}}
"""


def test_a_truncated_jpeg_fails_its_cell_naming_the_file(rbv_bin: str, tmp_path: Path) -> None:
    root = image_tree(tmp_path / "val")
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(whole)
    (root / "b" / "cut.jpg").write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    suite = tmp_path / "suite.yaml"
    suite.write_text(TINY_SUITE.format(root=json.dumps(str(root))))
    results = tmp_path / "results"
    done = subprocess.run([rbv_bin, "evaluate", str(suite), "--results", str(results), "-q"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RBV_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 1, done.stderr[-2000:]  # a cell errored
    assert "Traceback" not in done.stderr
    conn = sqlite3.connect(results / "rbv.sqlite")
    try:
        ((status, error),) = conn.execute("SELECT status, error FROM results").fetchall()
    finally:
        conn.close()
    first = error.splitlines()[0]
    assert status == "error" and "b/cut.jpg: cannot read the image" in first, first
    assert "truncated" in first


# --- pool workers die with their parent ---------------------------------------------------------

GENERATOR = textwrap.dedent("""\
    import json, os, sys, threading
    import numpy as np
    from robustbench_vit.data import corruption_cache as cc

    pids_file, where = sys.argv[1], sys.argv[2]
    images = np.random.default_rng(0).integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)

    def progress(n):
        if not os.path.exists(pids_file):
            pids = [pid for pool in cc._POOLS.values() for pid in pool._processes]
            with open(pids_file + ".tmp", "w") as f:
                json.dump(pids, f)
            os.replace(pids_file + ".tmp", pids_file)

    def generate():
        for seed in range(10**6):  # generating until killed
            cc.corrupt_images(images, ["glass_blur", "zoom_blur", "snow", "frost"], 3, seed,
                              workers=2, progress=progress)

    if where == "thread":
        worker = threading.Thread(target=generate)
        worker.start()
        worker.join()
    else:
        generate()
    """)


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_pool_workers_exit_when_their_parent_is_killed(tmp_path: Path, where: str) -> None:
    pids_file = tmp_path / "pids.json"
    parent = subprocess.Popen([sys.executable, "-c", GENERATOR, str(pids_file), where],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not pids_file.exists():
            assert parent.poll() is None, parent.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.05)
        workers = json.loads(pids_file.read_text())
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)  # mid-generation
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if alive(pid)], "workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:  # the workers this test started, left over on failure
            if alive(pid) and "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGKILL)


def generate_into(out: dict[str, np.ndarray], images: np.ndarray) -> None:
    out.update(corrupted.corrupt_images(images, ["contrast"], 2, 0, workers=2))


def test_a_pool_outlives_the_thread_that_started_its_workers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's parent-death signal follows the thread that started a worker: a pool used
    from a thread that then ends keeps working (it is not asked for that signal)."""
    monkeypatch.setattr(corrupted, "_POOLS", {})
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    expected = corrupted.corrupt_images(images, ["contrast"], 2, 0, workers=1)["contrast"]
    try:
        for _ in range(2):  # two short-lived threads, the second after the first has ended
            got: dict[str, np.ndarray] = {}
            thread = threading.Thread(target=generate_into, args=(got, images))
            thread.start()
            thread.join()
            time.sleep(0.5)  # time for a parent-death signal to arrive, had one been set
            assert np.array_equal(got["contrast"], expected)
    finally:
        corrupted.shutdown_pools()


# --- corrupted-images cache entries carry a checksum ----------------------------------------------

IMAGES = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "corrupted"
    folder.mkdir()
    monkeypatch.setattr(corrupted, "corrupted_dir", lambda: folder)
    return folder


def touch_later(path: Path) -> None:
    """Move `path`'s mtime on, as a later write would (file systems with coarse clocks may
    give an immediate rewrite the same mtime)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


@pytest.mark.parametrize("damage", ["flip", "older_entry"])
def test_a_damaged_entry_is_rebuilt_not_trusted(cache: Path, damage: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    clean = corrupted.cached_corruptions(IMAGES, ["contrast"], 2, 0, workers=1)["contrast"]
    clean = np.array(clean)
    (entry,) = cache.glob("*.npy")
    written = entry.read_bytes()
    if damage == "flip":  # one byte of one pixel
        data = bytearray(written)
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))
    else:  # the right shape, no checksum: what older versions wrote (here with wrong pixels)
        np.save(entry, np.zeros_like(IMAGES))
    touch_later(entry)
    with caplog.at_level(logging.WARNING):
        got = corrupted.cached_corruptions(IMAGES, ["contrast"], 2, 0, workers=1)["contrast"]
    assert np.array_equal(got, clean)
    assert entry.read_bytes() == written  # rebuilt in place
    reason = "fails its checksum" if damage == "flip" else "has no checksum"
    assert any(reason in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records), caplog.text


def test_an_entry_is_still_a_plain_npy_file(cache: Path) -> None:
    """The checksum sits after the pixels: numpy (and older versions) read the entry as before."""
    corrupted.cached_corruptions(IMAGES, ["contrast"], 2, 0, workers=1)
    (entry,) = cache.glob("*.npy")
    assert np.load(entry).shape == IMAGES.shape
    assert np.load(entry, mmap_mode="r").shape == IMAGES.shape


CORRUPTION_SUITE = """\
suite: hostile_cache
seed: 0
device: cpu
data: {dataset: synthetic, size: 24, image_size: 32, batch_size: 12}
models:
  - name: vit
    source: timm:vit_tiny_patch16_224
    kwargs: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2, num_classes: 10}
scenarios:
  - {kind: corruption, names: [gaussian_noise, contrast], severity: 2}
"""
ROW = "cell_key, scenario, params, metric, value, n, status"


def run_suite(rbv_bin: str, suite: Path, results: Path,
              cache_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([rbv_bin, "evaluate", str(suite), "--results", str(results), "-q"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RBV_CACHE": str(cache_root), "COLUMNS": "200"})


def stored_rows(results: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(results / "rbv.sqlite")
    try:
        return sorted(conn.execute(f"SELECT {ROW} FROM results").fetchall(), key=repr)
    finally:
        conn.close()


@pytest.mark.slow  # two runs of the console script
def test_a_flipped_byte_in_a_cache_entry_is_rebuilt_by_the_next_run(rbv_bin: str,
                                                                    tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(CORRUPTION_SUITE)
    first = run_suite(rbv_bin, suite, tmp_path / "first", tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-2000:]
    entries = sorted((tmp_path / "cache" / "corrupted").glob("*.npy"))
    assert len(entries) == 2
    written = {entry: entry.read_bytes() for entry in entries}
    damaged = bytearray(written[entries[0]])
    damaged[len(damaged) // 2] ^= 0x01
    entries[0].write_bytes(bytes(damaged))
    again = run_suite(rbv_bin, suite, tmp_path / "again", tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{entries[0]} fails its checksum" in again.stderr and "rebuilding" in again.stderr
    assert {entry: entry.read_bytes() for entry in entries} == written
    assert stored_rows(tmp_path / "again") == stored_rows(tmp_path / "first")
