"""MAP fitting and deblending: initialisation, constraints, the in-jit optimiser,
batched fits of many cutouts, measurements and catalogs, saving and loading."""

from .constraints import Constraints as Constraints
from .init import detect as detect
from .init import detection_image as detection_image
from .init import init_scene as init_scene
from .init import positions_from as positions_from
from .init import solve_spectra as solve_spectra
from .optimise import DEFAULT_STEPS as DEFAULT_STEPS
from .optimise import FitResult as FitResult
from .optimise import compilation_count as compilation_count
from .optimise import fit as fit
