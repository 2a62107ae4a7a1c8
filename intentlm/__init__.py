"""The ``intentlm`` command: one click group assembled from the packages' own commands."""
