import math

import numpy as np


def integrated_gaussian(shape, center, sigma):
    """Analytic image of a unit-flux round Gaussian integrated over unit pixels."""
    def axis(n, c):
        edges = (np.arange(n + 1) - 0.5 - c) / (math.sqrt(2) * sigma)
        return 0.5 * np.diff([math.erf(e) for e in edges])

    return np.outer(axis(shape[0], center[0]), axis(shape[1], center[1]))
