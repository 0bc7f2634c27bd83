"""The image families of the transfer study, each with a memorizing and a generalizing training set.

Every family is data that ships inside a pip package or that code generates, behind a ``data=`` option of the app
(``configs/data/``; ``experiment=<family>_memorize|_generalize`` reproduces a run with the callback). The role
says what the family may be used for: ``calibrate`` families may set constants (written to
``docs/transfer/constants.md`` before any ``report`` family is measured), ``report`` families are only reported,
``recheck`` families are the project's own demo data (calibration data of earlier studies), re-checked with the
defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memcallback.app.data import (
    ArrayDataModule,
    DigitsDataModule,
    FacesDataModule,
    PatchesDataModule,
    TexturesDataModule,
)


@dataclass(frozen=True)
class Family:
    """One image family.

    Attributes:
        name: the family's name (``data=`` option of the app and folder of its runs).
        make: builds the family's data module for ``num_train`` distinct images (``None``: all) and a seed.
        memorize_n: distinct training images of the memorizing run.
        role: ``"calibrate"``, ``"report"`` or ``"recheck"``.
        description: one line for the tables.
    """

    name: str
    make: Callable[[int | None, int], ArrayDataModule]
    memorize_n: int
    role: str
    description: str


BATCH = 32

FAMILIES = {
    "textures": Family("textures", lambda n, seed: TexturesDataModule(num_train=n, seed=seed, batch_size=BATCH),
                       16, "calibrate", "procedural colour textures, 3x16x16 (18,000 training textures)"),
    "faces": Family("faces", lambda n, seed: FacesDataModule(num_train=n, seed=seed, batch_size=BATCH),
                    10, "report", "scikit-image's LFW faces with mirrors, 1x24x24 (180 training faces)"),
    "photos": Family("photos", lambda n, seed: PatchesDataModule(source="skimage", downscales=(3, 6), num_train=n,
                                                                 seed=seed, batch_size=BATCH),
                     24, "report", "patches of scikit-image's 7 RGB photos, 3x16x16"),
    "gray": Family("gray", lambda n, seed: PatchesDataModule(source="gray", num_train=n, seed=seed, batch_size=BATCH),
                   24, "report", "patches of 8 gray photos (scikit-image), an MRI slice and 2 elevation maps "
                                 "(matplotlib), 1x16x16"),
    "digits": Family("digits", lambda n, seed: DigitsDataModule(num_train=n, seed=seed, batch_size=BATCH),
                     16, "recheck", "scikit-learn's 8x8 digits, 1x8x8 (the demo's data; 1,617 training digits)"),
    "patches": Family("patches", lambda n, seed: PatchesDataModule(num_train=n, seed=seed, batch_size=BATCH),
                      32, "recheck", "patches of scikit-learn's 2 photos, 3x16x16 (the patches demo's data)"),
}
