# nudiff: diffusion-based data augmentation for nuclei segmentation.
# Stages, in order; rule X runs workflow_scripts/X.py, which calls nudiff's X()
# (the exceptions, shared steps, are listed in tests/test_rule_names.py).

from snakemake.utils import min_version

min_version("8.20")


# The default configuration is the built-in demo. A preset given with
# --configfile (config/monuseg.yaml, ...) replaces it rather than merging into
# it, so a preset never also runs the demo; whatever a preset leaves out takes
# the schema's defaults, which are the paper's settings.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "config/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/diffusion.smk"
include: "rules/segmentation.smk"
include: "rules/report.smk"
include: "rules/export.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
