"""GalSim-backed survey simulations with truth (see `deconvjax.sims.blends` for conventions).

A simulated field is a `deconvjax.io.SimulatedField`: the observation container
(`deconvjax.io.ObservationData`) that real data are read into, plus the truth; the field's
TAN WCS is `deconvjax.wcs.make_wcs` (both re-exported here).
"""

from ..io.data import SimulatedField as SimulatedField
from ..wcs import COSMOS_CENTER as COSMOS_CENTER
from ..wcs import make_wcs as make_wcs
from .blends import blendedness as blendedness
from .blends import default_field as default_field
from .blends import draw_psf_images as draw_psf_images
from .blends import simulate_field as simulate_field
from .blends import simulate_fields as simulate_fields
from .paired import PairedField as PairedField
from .paired import simulate_epochs as simulate_epochs
from .paired import simulate_paired as simulate_paired
from .stamps import StampSet as StampSet
from .stamps import iter_stamp_batches as iter_stamp_batches
from .stamps import read_stamp_truth as read_stamp_truth
from .stamps import simulate_stamps as simulate_stamps
from .stamps import write_stamp_shards as write_stamp_shards
from .surveys import EUCLID as EUCLID
from .surveys import HSC as HSC
from .surveys import HST as HST
from .surveys import LSST as LSST
from .surveys import SURVEYS as SURVEYS
from .surveys import Band as Band
from .surveys import Survey as Survey
from .surveys import get_survey as get_survey
