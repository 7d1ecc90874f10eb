"""GLUE: read the real task files, fine-tune and evaluate (compressed) models, sweep, report."""
