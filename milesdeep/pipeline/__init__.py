"""Decoding and sampling, preprocessing, the runner, cut planning and outputs."""
