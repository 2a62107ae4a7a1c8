"""Datasets (format, iTAG conversion, strategy check), fine-tuning, merging and base-model preparation."""
