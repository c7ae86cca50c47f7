"""Fine-tuning experts from any generalist: `finetune(...)` and ``python -m tcube.finetune``."""
from .run import Recipe, finetune

__all__ = ["Recipe", "finetune"]
