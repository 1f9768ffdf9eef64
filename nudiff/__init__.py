"""nudiff: diffusion-based data augmentation for nuclei instance segmentation.

The library behind the Snakemake workflow. Every stage a rule runs is a plain
function here, importable from tests and notebooks; nothing in this package
imports Snakemake.
"""

__version__ = "0.1.0"
