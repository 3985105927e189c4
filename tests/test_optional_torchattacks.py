"""torchattacks is optional: without it every attack still registers, the attacks that do not use it
run, and those that do fail at use with an error that says how to install it.

torchattacks is installed apart from the package (pip --no-deps, see the Makefile), so a plain
`pip install .` lacks it. Here it is blocked with ``sys.modules["torchattacks"] = None``: in a
fresh interpreter for the import of the attack plugins, in-process for running an attack.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from robustbench_vit.core.errors import RbvError
from robustbench_vit.core.params import validate_params
from robustbench_vit.core.plugins import load_plugins
from robustbench_vit.core.registry import ATTACKS

load_plugins()

REPO = Path(__file__).resolve().parents[1]
INSTALL_HINT = 'pip install --no-deps "torchattacks>=3.5,<4"'
TORCHATTACKS_ATTACKS = ["apgd_ce", "apgd_dlr", "fgsm", "pgd", "square"]
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
            "num_classes": 2}  # 2 classes: a random-init model gets some images right to attack

BLOCKED_IMPORT = textwrap.dedent("""\
    import json, sys
    sys.modules["torchattacks"] = None  # import torchattacks now raises ImportError
    import torch
    from robustbench_vit.core.cells import ModelConfig
    from robustbench_vit.core.params import validate_params
    from robustbench_vit.core.plugins import load_plugins
    from robustbench_vit.core.registry import ATTACKS
    from robustbench_vit.models.sources import build_model

    load_plugins()
    model = build_model(ModelConfig(name="vit", source="timm:vit_tiny_patch16_224",
                                    kwargs=json.loads(sys.argv[1])), "cpu")
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    patch = validate_params(ATTACKS.get("patch"), {"patch_size": 8, "steps": 2})
    x_adv = patch.perturb(model, x.clone(), y, seed=0)
    changed = (x_adv != x).any(1)  # (B,H,W): pixels the patch replaced
    print(json.dumps({
        "names": ATTACKS.names(),
        "torchattacks_loaded": sys.modules["torchattacks"] is not None,
        "patch_changed": [int(c.sum()) for c in changed],
    }))
""")


def test_attack_plugins_import_without_torchattacks() -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, json.dumps(TINY_VIT)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["torchattacks_loaded"]
    assert report["names"] == ATTACKS.names()  # every attack registered, as with torchattacks
    assert set(TORCHATTACKS_ATTACKS) <= set(report["names"])
    # patch (no torchattacks) still perturbs: one 8x8 patch replaced per image, nothing else
    assert all(0 < n <= 8 * 8 for n in report["patch_changed"]), report["patch_changed"]


@pytest.fixture()
def no_torchattacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchattacks blocked for this test (sys.modules is restored afterwards)."""
    monkeypatch.setitem(sys.modules, "torchattacks", None)


@pytest.mark.parametrize("name", TORCHATTACKS_ATTACKS)
def test_torchattacks_attack_fails_at_use_with_install_hint(no_torchattacks: None,
                                                            name: str) -> None:
    cls = ATTACKS.get(name)
    params = {"steps": 2} if name.startswith(("pgd", "apgd")) else {}
    attack = validate_params(cls, {**params, "eps": 8 / 255})
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(RbvError) as info:
        attack.perturb(model, x, y, seed=0)
    message = str(info.value)
    assert repr(name) in message
    assert INSTALL_HINT in message
    assert "--no-deps because" in message
    assert info.value.exit_code == 2


def test_pgd_cell_without_torchattacks_is_an_error_row(no_torchattacks: None,
                                                       tmp_path: Path) -> None:
    from robustbench_vit.config.load import load_suite
    from robustbench_vit.execution.evaluate import evaluate_cell

    suite = {
        "suite": "no_torchattacks", "seed": 0, "device": "cpu",
        "data": {"dataset": "synthetic", "classes": 2, "size": 16, "image_size": 32,
                 "batch_size": 16},
        "models": [{"name": "vit", "source": "timm:vit_tiny_patch16_224", "kwargs": TINY_VIT}],
        "scenarios": [{"kind": "attack", "name": "pgd", "eps": "8/255", "steps": 2},
                      {"kind": "attack", "name": "patch", "patch_size": 8, "steps": 2}],
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    pgd_cell, patch_cell = load_suite(path).cells()
    failed = evaluate_cell(pgd_cell)
    assert failed.status == "error"
    first_line = failed.error.splitlines()[0]  # what `rbv evaluate` prints per error row
    assert first_line.startswith("MissingDependencyError: attack 'pgd' needs torchattacks")
    assert INSTALL_HINT in first_line
    patched = evaluate_cell(patch_cell)
    assert patched.status == "ok", patched.error
    assert any(m.metric == "robust_accuracy" and m.n > 0 for m in patched.measurements)
