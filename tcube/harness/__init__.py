"""The evaluation harness behind ``python -m tcube.eval``: plan, run cells, cache, write results."""
