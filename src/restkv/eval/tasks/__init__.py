"""Evaluation tasks: each builds seeded samples and scores predictions."""
