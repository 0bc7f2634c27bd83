"""The reference app: diffusion models (:mod:`.models`), data modules (:mod:`.data`), the Hydra training app
behind ``train.py`` (:mod:`.train`) and the audit command line (:mod:`.cli`)."""
