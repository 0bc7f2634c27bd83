"""Lightning data modules: offline digits, a 2-D toy mixture, image folders, torchvision sets.

All share ``ArrayDataModule``'s options for a held-out split, a training subset and duplicated images.
"""

from memcallback.data.base import ArrayDataModule
from memcallback.data.digits import DigitsDataModule
from memcallback.data.image_folder import ImageFolderDataModule
from memcallback.data.sampler import ReplacementSampler
from memcallback.data.splits import ForcedSelection
from memcallback.data.torchvision_sets import TorchvisionDataModule
from memcallback.data.toy import ToyMixtureDataModule

__all__ = [
    "ArrayDataModule",
    "DigitsDataModule",
    "ForcedSelection",
    "ImageFolderDataModule",
    "ReplacementSampler",
    "TorchvisionDataModule",
    "ToyMixtureDataModule",
]
