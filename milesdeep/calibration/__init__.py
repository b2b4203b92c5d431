"""Calibration frames, FP16 / INT8 (Q/DQ) model variants and accuracy reports."""
