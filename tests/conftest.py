"""Loads the hypothesis profile (tests/hyp.py) before any test module is imported."""
import hyp

hyp.load()
