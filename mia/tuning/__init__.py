"""Tuning an attack's knobs on the calibration part only (``tune=<grid>``)."""
