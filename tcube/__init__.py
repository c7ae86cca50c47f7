"""tcube: test-time task-adaptive merging (T^3) of medical vision-language models."""
from .api import merge_and_predict
from .methods import METHODS, MergeOutput, Merger
from .models import ModelPair, load_model, load_pair

__version__ = "0.1.0"
__all__ = ["METHODS", "MergeOutput", "Merger", "ModelPair", "load_model", "load_pair", "merge_and_predict"]
