"""Offline evaluation: the reference's figures, per-intent and multi-intent metrics, reports."""
