"""``python -m tcube.eval [overrides]``: the evaluation harness (tcube.harness.evaluate)."""
from .harness.evaluate import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    main()
