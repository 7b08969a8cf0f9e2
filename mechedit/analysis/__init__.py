"""Analyses built on tracing and editing: does localization inform editing? (Hase et al. 2023)."""
