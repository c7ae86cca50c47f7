"""Merging methods and the `Merger` that runs them."""
from .merger import METHODS, MergeOutput, Merger

__all__ = ["METHODS", "MergeOutput", "Merger"]
