# nudiff: diffusion-based data augmentation for nuclei segmentation.
# Stages, in order; every rule's code is in workflow_scripts/<rule>.py -> nudiff/.

from snakemake.utils import min_version

min_version("8.20")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
