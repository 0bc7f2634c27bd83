"""Lightning data modules: offline digits, photo patches, faces and textures, a 2-D toy mixture, image folders,
torchvision sets.

All share ``ArrayDataModule``'s options for a held-out split, a training subset and duplicated images.
"""

from memcallback.app.data.base import ArrayDataModule
from memcallback.app.data.digits import DigitsDataModule
from memcallback.app.data.faces import FacesDataModule
from memcallback.app.data.image_folder import ImageFolderDataModule
from memcallback.app.data.patches import PatchesDataModule
from memcallback.app.data.sampler import ReplacementSampler
from memcallback.app.data.splits import ForcedSelection
from memcallback.app.data.textures import TexturesDataModule
from memcallback.app.data.torchvision_sets import TorchvisionDataModule
from memcallback.app.data.toy import ToyMixtureDataModule

__all__ = [
    "ArrayDataModule",
    "DigitsDataModule",
    "FacesDataModule",
    "ForcedSelection",
    "ImageFolderDataModule",
    "PatchesDataModule",
    "ReplacementSampler",
    "TexturesDataModule",
    "TorchvisionDataModule",
    "ToyMixtureDataModule",
]
