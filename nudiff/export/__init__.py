"""Synthetic data in layouts other tools read: nudiff's ``folder`` dataset, HoVer-Net's
training patches, and a manifest of where every file came from.

- :mod:`.layouts`: the export folder, one (image, instance map) pair at a time;
- :mod:`.training_set`: rule ``export_training_set``, the synthetic pairs or the augmented set;
- :mod:`.label_to_image`: rule ``label_to_image``, images drawn for a user's own instance maps.
"""
