"""tcube.zoo: small real generalist/expert CLIP pairs trained on the MedMNIST files in the data root.

No pretrained medical CLIP can be downloaded offline, so the project trains its own (DESIGN §6):
a generalist on every modality, then one expert per modality fine-tuned from it, and base-class
experts for datasets with ≥ 4 classes. The harness names them ``zoo:<name>``::

    from tcube.zoo import resolve_spec
    resolve_spec("zoo:expert-retinamnist")            # -> "local-dir:/…/zoo/default/seed0/expert-retinamnist"

Names: ``generalist``, ``expert-<dataset>``, ``expert-<dataset>-base``. Command line:
``python -m tcube.zoo [--profile default|smoke] [--seed 0] [--data-root DIR] [--only NAME ...] [--force]``.
"""
from ..io import tcube_home
from .build import ensure_model, ensure_zoo, resolve_spec
from .recipe import PROFILES, Recipe, get_recipe
from .store import model_names, read_manifest, zoo_dir

__all__ = ["PROFILES", "Recipe", "ensure_model", "ensure_zoo", "get_recipe", "model_names", "read_manifest",
           "resolve_spec", "tcube_home", "zoo_dir"]
