"""Calibrators, risk control (FNR thresholds, SCRC-I), metrics and bootstrap. JAX/numpy only."""
