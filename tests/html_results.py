"""A results store for HTML tests: every plot input, a flag, a skip, an error, hostile names.

Rows are committed directly (no model runs), so building it takes milliseconds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from robustbench_vit.core.cells import Cell, DataConfig, ModelConfig
from robustbench_vit.core.metrics import Measurement, proportion
from robustbench_vit.execution.evaluate import CellResult
from robustbench_vit.results.store import ResultStore
from robustbench_vit.scenarios.attack import NOT_DIFFERENTIABLE

SUITE = "htmltest"
HOSTILE_MODEL = "<script>alert(1)</script>"
HOSTILE_DEFENSE = '" onmouseover=alert(2) x="'
HOSTILE_ERROR = "ValueError: </script><script>alert(3)</script>"
EPS = [2 / 255, 8 / 255]


def cell(model: str, kind: str, params: dict[str, object], defense: str = "none",
         defense_params: dict[str, object] | None = None, suite: str = SUITE) -> Cell:
    return Cell(suite=suite, suite_version=3,
                model=ModelConfig(name=model, source=f"timm:{model}", fingerprint=model),
                defense=defense, defense_params=defense_params or {}, scenario_kind=kind,
                scenario_params=params, data=DataConfig(dataset="digits"), seed=7)


def commit(store: ResultStore, c: Cell, *measurements: Measurement) -> None:
    store.commit(c, CellResult(cell_key=c.key, status="ok", measurements=list(measurements),
                               device="cpu"))


def subject_rows(store: ResultStore, model: str, defense: str, dparams: dict[str, object] | None,
                 base: int, flagged: bool = False) -> None:
    """Every scenario with a plot, for one model/defense (accuracies out of 100)."""
    args = {"defense": defense, "defense_params": dparams}
    commit(store, cell(model, "clean", {}, **args), proportion("accuracy", base, 100))
    for i, eps in enumerate(EPS):
        flags = (NOT_DIFFERENTIABLE,) if flagged else ()
        commit(store, cell(model, "attack", {"name": "pgd", "eps": eps}, **args),
               replace(proportion("robust_accuracy", base // (2 + 2 * i), 100), flags=flags))
    for severity in (1, 3):
        commit(store, cell(model, "corruption", {"severity": severity, "names": ["fog", "snow"]},
                           **args),
               proportion("accuracy", base, 100),
               *(Measurement(**{**proportion("corruption_accuracy", base - 10 * severity - j, 100)
                                .__dict__, "scenario_name": name})
                 for j, name in enumerate(["fog", "snow"])))
    commit(store, cell(model, "layer_order", {"prune": [1]}, **args),
           proportion("accuracy", base, 100, order="sequential"),
           *(proportion("order_accuracy", base - 5 * k, 100, permutation=k) for k in range(3)),
           *(proportion("pruned_accuracy", base - 20 - d, 100, draw=d, pruned=1)
             for d in range(2)))


def write_results(folder: Path) -> Path:
    """Write the test store into `folder` (suites SUITE and "second"); return the folder."""
    with ResultStore(folder) as store:
        subject_rows(store, "vit", "none", None, 90)
        subject_rows(store, "vit", "smoothing", {"size": 4}, 70, flagged=True)
        subject_rows(store, HOSTILE_MODEL, HOSTILE_DEFENSE, {"note": HOSTILE_DEFENSE}, 80)
        commit(store, cell("vit", "certify", {"patch_size": 5}, "smoothing", {"size": 4}),
               proportion("certified_accuracy", 20, 100), proportion("smoothed_accuracy", 65, 100))
        skipped = cell("vit", "certify", {"patch_size": 5})
        store.commit(skipped, CellResult(cell_key=skipped.key, status="skipped",
                                         error="certify needs the smoothing defense"))
        broken = cell(HOSTILE_MODEL, "attack", {"name": "square", "eps": 8 / 255},
                      HOSTILE_DEFENSE, {"note": HOSTILE_DEFENSE})
        traceback = f"Traceback (most recent call last):\n{HOSTILE_ERROR}"
        store.commit(broken, CellResult(cell_key=broken.key, status="error", error=traceback))
        commit(store, cell("other", "clean", {}, suite="second"), proportion("accuracy", 1, 2))
    return folder
