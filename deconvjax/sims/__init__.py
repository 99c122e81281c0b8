"""GalSim-backed survey simulations with truth (see `deconvjax.sims.blends` for conventions)."""

from .blends import (
    COSMOS_CENTER as COSMOS_CENTER,
)
from .blends import (
    SimulatedField as SimulatedField,
)
from .blends import (
    blendedness as blendedness,
)
from .blends import (
    default_field as default_field,
)
from .blends import (
    draw_psf_images as draw_psf_images,
)
from .blends import (
    make_wcs as make_wcs,
)
from .blends import (
    simulate_field as simulate_field,
)
from .blends import (
    simulate_fields as simulate_fields,
)
from .surveys import (
    EUCLID as EUCLID,
)
from .surveys import (
    HSC as HSC,
)
from .surveys import (
    HST as HST,
)
from .surveys import (
    LSST as LSST,
)
from .surveys import (
    SURVEYS as SURVEYS,
)
from .surveys import (
    Band as Band,
)
from .surveys import (
    Survey as Survey,
)
from .surveys import (
    get_survey as get_survey,
)
