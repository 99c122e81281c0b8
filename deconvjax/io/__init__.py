"""Input and output: the host-side observation container (`ObservationData`; a
`SimulatedField` is one plus its truth), the one FITS reader (`read_images`, with
`read_arrays`, `read_observation` and `read_field` on the same code), the writers and
truth tables, the product writer (`write_image`: WCS and BUNIT kept), and noise
estimation.

`deconvjax.io` sits below the simulations: `deconvjax.sims` builds its fields from these
containers, and nothing here imports `deconvjax.sims` (or GalSim).
"""

from .data import ObservationData as ObservationData
from .data import SimulatedField as SimulatedField
from .fits import NoiseMapError as NoiseMapError
from .fits import is_observation_file as is_observation_file
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
from .products import flux_unit as flux_unit
from .products import image_header as image_header
from .products import write_image as write_image
