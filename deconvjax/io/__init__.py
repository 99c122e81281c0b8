"""Input and output: FITS observations, simulated fields and truth tables."""

from .fits import NoiseMapError as NoiseMapError
from .fits import ObservationData as ObservationData
from .fits import read_arrays as read_arrays
from .fits import read_field as read_field
from .fits import read_images as read_images
from .fits import read_observation as read_observation
from .fits import read_truth as read_truth
from .fits import write_field as write_field
from .fits import write_observation as write_observation
from .fits import write_truth as write_truth
from .noise import NoiseEstimate as NoiseEstimate
from .noise import estimate_noise as estimate_noise
