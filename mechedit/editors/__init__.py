"""Editors: ROME, MEMIT and constrained fine-tuning, as reversible edits."""
