"""Nuclei structures: targets from instance maps and instances back from structures.

Split the way HoVer-Net splits its domain code: :mod:`.targets` builds the 3-channel
structure (semantic, horizontal, vertical; SPEC.md section 3) from an instance map, and
:mod:`.watershed` post-processes a structure into an instance map.
"""

from nudiff.structure.cleanup import clean_instances
from nudiff.structure.targets import (
    HORIZONTAL,
    N_CHANNELS,
    SEMANTIC,
    VERTICAL,
    nuclei_structure,
    structure_from_model_range,
    structure_to_model_range,
)
from nudiff.structure.watershed import instances_from_structure

__all__ = [
    "HORIZONTAL",
    "N_CHANNELS",
    "SEMANTIC",
    "VERTICAL",
    "clean_instances",
    "instances_from_structure",
    "nuclei_structure",
    "structure_from_model_range",
    "structure_to_model_range",
]
