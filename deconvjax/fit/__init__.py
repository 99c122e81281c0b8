"""MAP fitting and deblending: initialisation, constraints, the solver (`AdamSolver`) and
the in-jit loop that runs it, batched fits of many cutouts, measurements and catalogs,
saving and loading."""

from .batch import batch_compilation_count as batch_compilation_count
from .batch import fit_batch as fit_batch
from .batch import init_batch as init_batch
from .batch import stack as stack
from .batch import unstack as unstack
from .constraints import Constraints as Constraints
from .detection import Detection as Detection
from .detection import find_sources as find_sources
from .init import detect as detect
from .init import detection_image as detection_image
from .init import init_scene as init_scene
from .init import positions_from as positions_from
from .init import solve_spectra as solve_spectra
from .io import load_scene as load_scene
from .io import save_scene as save_scene
from .io import write_results as write_results
from .measure import CatalogFlag as CatalogFlag
from .measure import catalog as catalog
from .measure import deblend as deblend
from .measure import flux_errors as flux_errors
from .measure import footprint_chi2 as footprint_chi2
from .measure import source_fluxes as source_fluxes
from .optimise import FitResult as FitResult
from .optimise import compilation_count as compilation_count
from .optimise import fit as fit
from .pipeline import write_products as write_products
from .slots import PaddedScene as PaddedScene
from .slots import add_source as add_source
from .slots import pad_scene as pad_scene
from .slots import remove_source as remove_source
from .solver import DEFAULT_STEPS as DEFAULT_STEPS
from .solver import AbstractFitSolver as AbstractFitSolver
from .solver import AdamSolver as AdamSolver
from .solver import FitProblem as FitProblem
from .solver import Objective as Objective
from .structure import add_structure as add_structure
from .structure import with_structure_slots as with_structure_slots
