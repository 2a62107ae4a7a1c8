"""Datasets: the JSON format, iTAG manifests, the strategy linter and splits."""
