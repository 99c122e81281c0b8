"""Expectation-maximisation (EM) of a diffusion prior from corrupted cutouts."""
