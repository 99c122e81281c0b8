"""GalSim-backed survey simulations with truth (see `deconvjax.sims.blends` for conventions)."""

from .blends import (
    COSMOS_CENTER as COSMOS_CENTER,
    SimulatedField as SimulatedField,
    blendedness as blendedness,
    default_field as default_field,
    draw_psf_images as draw_psf_images,
    make_wcs as make_wcs,
    simulate_field as simulate_field,
    simulate_fields as simulate_fields,
)
from .surveys import (
    EUCLID as EUCLID,
    HSC as HSC,
    HST as HST,
    LSST as LSST,
    SURVEYS as SURVEYS,
    Band as Band,
    Survey as Survey,
    get_survey as get_survey,
)
