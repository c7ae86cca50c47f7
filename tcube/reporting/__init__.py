"""Results and statistics: results.jsonl I/O, scores, intervals, report.md, plots. Imports no model code."""
