"""Input and output: FITS observations, simulated fields and truth tables."""

from .fits import (
    ObservationData as ObservationData,
    read_arrays as read_arrays,
    read_field as read_field,
    read_images as read_images,
    read_observation as read_observation,
    read_truth as read_truth,
    write_field as write_field,
    write_observation as write_observation,
    write_truth as write_truth,
)
