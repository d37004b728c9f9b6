"""Evaluation: tasks, the prefill-once engine, the results store and reports."""
