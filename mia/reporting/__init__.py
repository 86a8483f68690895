"""Reporting: output files, figures, the console table, the W&B run, and the sweep summary."""
