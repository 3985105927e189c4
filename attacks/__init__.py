"""First-party attacks; each module registers one attack by name."""

from robustbench_vit.api import import_submodules

import_submodules(__name__, __path__)
