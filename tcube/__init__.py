"""tcube: test-time task-adaptive merging (T^3) of medical vision-language models."""
from .api import merge_and_predict
from .methods import Kind, MergeOutput, Merger, Method, method_names, register_method
from .models import ModelPair, load_model, load_pair

__version__ = "0.1.0"
__all__ = ["Kind", "MergeOutput", "Merger", "Method", "ModelPair", "load_model", "load_pair", "merge_and_predict",
           "method_names", "register_method"]
