"""Moved: the advance stage is nurture.steps.advance (step kinds as a registry)."""
from nurture.steps.advance import advance  # noqa: F401  # moved: see nurture/steps/advance.py
