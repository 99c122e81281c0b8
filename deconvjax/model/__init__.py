"""Sources, morphologies and scenes."""

from .background import PlaneBackground as PlaneBackground
from .base import AbstractMorphology as AbstractMorphology
from .gaussian import GaussianMorphology as GaussianMorphology
from .pixel import PixelMorphology as PixelMorphology
from .pixel import StructuredMorphology as StructuredMorphology
from .point import PointMorphology as PointMorphology
from .scene import Scene as Scene
from .sersic import SersicMorphology as SersicMorphology
from .source import Source as Source
