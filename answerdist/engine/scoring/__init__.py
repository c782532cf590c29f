"""Exact scoring: prompts encoded with their answer tries, forward passes, sampling for open tasks,
and the scores as tables."""
