"""Expectation-maximisation of galaxy priors from corrupted survey cutouts."""
