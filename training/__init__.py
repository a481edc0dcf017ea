"""Training code of facerecon: real-photo data (:mod:`training.data`), augmentation (:mod:`training.augment`)."""
