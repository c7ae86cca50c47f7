"""The maths, free of models and I/O: divergences and λ rules, static state-dict merges, temperature scaling."""
