"""Cells never inherit a model mode from earlier cells.

torchattacks puts its model back into training mode after an attack when the model it was given
was in training mode — and a freshly built wrapper (EOT, a defense's attack view) is. A smoothed
model in training mode answers with one random ablation instead of its votes, so every later cell
sharing the cached model would be wrong. Every inference defense is checked: clean, then gradient
attacks (with and without EOT), then clean again must give the same numbers, with every cached
module in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from robustbench_vit import evaluate_cell, load_suite
from robustbench_vit.api import DEFENSES
from robustbench_vit.core.plugins import load_plugins
from robustbench_vit.execution import evaluate as ev

load_plugins()
INFERENCE_DEFENSES = [name for name in DEFENSES.names()
                      if not DEFENSES.get(name)().needs_training()]

SUITE = """\
suite: eval_mode
device: cpu
data: {{dataset: digits, split: test, image_size: 32, n_examples: 40, batch_size: 20}}
models:
  - {{name: vit, source: "zoo:digits_vit", defenses: [{defense}]}}
scenarios:
  - {{kind: clean}}
  - {{kind: attack, name: pgd, steps: 2, eps: 8/255}}
  - {{kind: attack, name: fgsm, eps: 8/255, eot: 2}}
  - {{kind: shift, mode: circular, max_shift: 2, passes: 1}}
"""


@pytest.mark.parametrize("defense", INFERENCE_DEFENSES)
def test_attacks_leave_the_shared_model_in_eval_mode(defense: str, tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(defense=defense))
    clean, pgd, fgsm_eot, shift = load_suite(path).cells("cpu")
    ev._MODEL_CACHE.clear()
    first = [evaluate_cell(clean), evaluate_cell(shift)]
    for cell in (pgd, fgsm_eot):
        result = evaluate_cell(cell)
        assert result.status == "ok", result.error
        training = [name for model in ev._MODEL_CACHE.values()
                    for name, module in model.named_modules() if module.training]
        assert not training, f"{cell.scenario_label} left modules in training mode: {training[:3]}"
    again = [evaluate_cell(clean), evaluate_cell(shift)]
    for before, after in zip(first, again, strict=True):
        assert before.status == after.status == "ok"
        assert [(m.metric, m.value) for m in before.measurements] == \
            [(m.metric, m.value) for m in after.measurements]
