"""``python -m tcube.report RUN_DIR [...]``: merge runs into report.md and summary.json (tcube.reporting)."""
from .reporting.report import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
