"""tcube.zoo: small real generalist/expert CLIP pairs trained on the MedMNIST files in the data root.

No pretrained medical CLIP can be downloaded offline, so the project trains its own (DESIGN §6):
a generalist on every built-in modality present plus every dataset a run configures (a data config
is enough), then one expert per dataset fine-tuned from it, and base-class experts for datasets with
≥ 4 classes. The generalist's dataset set keys the zoo folder, so another set trains another zoo. The harness names them ``zoo:<name>``::

    from tcube.zoo import resolve_spec
    resolve_spec("zoo:expert-retinamnist")            # -> "local-dir:/…/zoo/default/seed0/expert-retinamnist"

Names: ``generalist``, ``expert-<dataset>``, ``expert-<dataset>-base``. Command line:
``python -m tcube.zoo [--profile default|smoke] [--seed 0] [--data-root DIR] [--data-config YAML ...]
[--only NAME ...] [--force]``.
"""
from ..io import tcube_home
from .build import Zoo, ensure_model, ensure_zoo, resolve_spec
from .recipe import PROFILES, Recipe, get_recipe
from .store import model_names, read_manifest, zoo_dir

__all__ = ["PROFILES", "Recipe", "Zoo", "ensure_model", "ensure_zoo", "get_recipe", "model_names", "read_manifest",
           "resolve_spec", "tcube_home", "zoo_dir"]
