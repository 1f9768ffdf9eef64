#!/usr/bin/env bash
# Issue 24's checks on a finished `make demo` (run in its folder, with its .venv):
# what the export targets plan, the exports themselves, what drawing 64 more pairs plans,
# label_to_image on the demo's own test maps, and the labelled Hover-Net on those images.
set -euo pipefail
record=$(cd "$(dirname "$0")" && pwd)
out=${1:-$record}
stats() { grep -A30 '^Job stats' | sed '/^$/q'; }
echo "## dry run: export/pairs and export/augmented of 10%"
snakemake -n --cores 2 results/demo/10pct/export/pairs results/demo/10pct/export/augmented | stats
snakemake --cores 2 results/demo/10pct/export/pairs results/demo/10pct/export/augmented
echo "## dry run: 64 more pairs of 10% (export/extra64)"
snakemake -n --cores 2 results/demo/10pct/export/extra64 | stats
echo 'label_to_image: {labels: results/demo/prepared/test, subset: 100}' > my-maps.yaml
echo "## dry run: label_to_image"
snakemake -n --cores 2 results/label_to_image --configfile config/config.yaml my-maps.yaml | stats
snakemake --cores 2 results/label_to_image --configfile config/config.yaml my-maps.yaml
python "$record/judge.py" . results/label_to_image 100 "$out/judged_100pct.csv"
