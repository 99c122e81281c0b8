"""Sources, morphologies and scenes. Each morphology owns its parametrisation for fitting
(see `deconvjax.model.base.AbstractMorphology`); `morphology_kinds` lists them by name."""

from .background import PlaneBackground as PlaneBackground
from .base import AbstractFreeFormMorphology as AbstractFreeFormMorphology
from .base import AbstractMorphology as AbstractMorphology
from .base import AbstractParametricMorphology as AbstractParametricMorphology
from .base import MeasuredShape as MeasuredShape
from .gaussian import GaussianMorphology as GaussianMorphology
from .kinds import morphology_class as morphology_class
from .kinds import morphology_kinds as morphology_kinds
from .parametrisation import Constraints as Constraints
from .pixel import PixelMorphology as PixelMorphology
from .pixel import StructuredMorphology as StructuredMorphology
from .pixel import as_structured as as_structured
from .point import PointMorphology as PointMorphology
from .scene import Scene as Scene
from .sersic import SersicMorphology as SersicMorphology
from .source import Source as Source
from .starlet import StarletMorphology as StarletMorphology
