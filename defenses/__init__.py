"""First-party defenses; each module registers one defense by name."""

from robustbench_vit.api import import_submodules

import_submodules(__name__, __path__)
