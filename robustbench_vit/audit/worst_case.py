"""The worst case per image over every attack of a threat model (AutoAttack's rule, across the
whole suite), and the flags that comparing attacks image by image makes possible.

Attack rows (`attack:*` robust_accuracy with per-example outcomes) are grouped by suite, model,
defense (with its parameters), evaluated slice and threat model: (norm, eps) for bounded attacks,
("patch", patch_size) for patches. In a group of two or more attacks:

- `worst_case_robust_accuracy` (scenario `attack:worst_case`): an image counts as robust only if
  it survives every attack of the group; so it is at most each attack's robust accuracy. It carries
  the flags every attack of the group carries (a flag on one attack is answered by the others).
- `blackbox_beats_whitebox`: a gradient attack whose images survive where a score-based attack of
  the group (or the same attack crafted on the undefended base model, `source: base`) fooled them,
  beyond the paired interval, gets this flag.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from ..core.metrics import paired_difference, proportion, register_flag, register_metric
from ..core.outcomes import ExampleBits
from ..core.registry import AGGREGATES, ANNOTATIONS, ATTACKS
from ..results.table import DEFENSE_PARAMS, row_flags

WORST_CASE = "worst_case_robust_accuracy"
WORST_SCENARIO = "attack:worst_case"

register_metric(WORST_CASE, higher_is_better=True, headline=True,
                description="Robust accuracy when an image must survive every attack of the same "
                            "threat model and budget in the suite (per image, AutoAttack's rule)")


def threat_of(params: dict[str, Any]) -> tuple[Any, ...] | None:
    """The threat model and budget of an attack row's params, or None."""
    if params.get("eps") is not None:
        return (params.get("norm", "Linf"), float(params["eps"]))
    if params.get("patch_size") is not None:
        return ("patch", int(params["patch_size"]))
    return None


def attack_groups(table: pd.DataFrame) -> Iterator[tuple[tuple[Any, ...], pd.DataFrame]]:
    """(group key, its attack rows) for every group of two or more attacks (module docstring)."""
    if table.empty:
        return
    rows = table[table["scenario"].astype(str).str.startswith("attack:")
                 & (table["scenario"] != WORST_SCENARIO)
                 & (table["metric"] == "robust_accuracy") & table["examples"].notna()]
    keys = []
    for params_text, examples in zip(rows["params"], rows["examples"], strict=True):
        params = json.loads(params_text)
        threat = threat_of(params)
        slice_key = str(examples).split(":", 1)[0]
        defense = json.dumps(params.get(DEFENSE_PARAMS), sort_keys=True)
        keys.append(None if threat is None else (defense, slice_key, *threat))
    rows = rows.assign(_group=keys)
    rows = rows[rows["_group"].notna()]
    for key, group in rows.groupby(["suite", "model", "defense", "_group"], sort=False):
        if len(group) >= 2:
            yield key, group.drop(columns="_group")


def worst_case_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One `worst_case_robust_accuracy` row per group of attacks."""
    out = []
    for (suite, model, defense, (defense_params, _slice, *threat)), group in attack_groups(table):
        bits = [ExampleBits.decode(e).bits for e in group["examples"]]
        if len({len(b) for b in bits}) != 1:
            continue
        survived = np.logical_and.reduce(bits)
        params: dict[str, Any] = ({"patch_size": threat[1]} if threat[0] == "patch"
                                  else {"norm": threat[0], "eps": threat[1]})
        if defense_params != "null":
            params[DEFENSE_PARAMS] = json.loads(defense_params)
        row = proportion(WORST_CASE, int(survived.sum()), len(survived))
        shared = set.intersection(*(set(row_flags(f)) for f in group["flags"]))
        out.append({"suite": suite, "model": model, "defense": defense,
                    "scenario": WORST_SCENARIO, "params": json.dumps(params, sort_keys=True),
                    "metric": WORST_CASE, "value": row.value, "n": row.n, "ci_low": row.ci_low,
                    "ci_high": row.ci_high, "flags": json.dumps(sorted(shared)) if shared else None,
                    "examples": ExampleBits(data=_slice, start=0, bits=survived).encode()})
    return pd.DataFrame(out)


def white_box(scenario: str, params_text: str) -> bool:
    """Whether an attack row is a gradient attack on the defended model (not a score-based
    attack, not a transfer from the base model)."""
    name = scenario.split(":", 1)[1]
    gradient = name in ATTACKS and bool(getattr(ATTACKS.get(name), "needs_gradients", True))
    return gradient and json.loads(params_text).get("source", "defended") != "base"


def blackbox_flags(table: pd.DataFrame) -> pd.Series:
    """`blackbox_beats_whitebox` for gradient-attack rows that a score-based attack or a transfer
    from the base model of their group beats on the same images (paired interval above 0);
    indexed like `table`."""
    flags: dict[Any, list[str]] = {}
    for _key, group in attack_groups(table):
        is_white = [white_box(s, p) for s, p in zip(group["scenario"], group["params"],
                                                    strict=True)]
        white = group[is_white]
        black = [ExampleBits.decode(e).bits
                 for e in group[[not w for w in is_white]]["examples"]]
        for index, row in white.iterrows():
            mine = ExampleBits.decode(row["examples"]).bits
            for theirs in black:
                if len(theirs) != len(mine):
                    continue
                low = paired_difference(int((mine & ~theirs).sum()), int((theirs & ~mine).sum()),
                                        len(mine))[1]
                if low > 0:
                    flags[index] = ["blackbox_beats_whitebox"]
    return pd.Series(flags, dtype=object)


register_flag("blackbox_beats_whitebox",
              "a score-based attack or a transfer from the undefended model, same threat model, "
              "fooled images this gradient attack did not, beyond the paired interval: the "
              "gradient attack did not work")
AGGREGATES.register("worst_case", worst_case_rows,
                    description="worst case per image over the attacks of a threat model")
ANNOTATIONS.register("blackbox_beats_whitebox", blackbox_flags,
                     description="flag gradient attacks a score-based attack beats image by image")
