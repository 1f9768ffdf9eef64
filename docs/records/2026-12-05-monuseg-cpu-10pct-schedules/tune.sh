#!/usr/bin/env bash
# Train every arm of a finished block again with another schedule, on that block's generator,
# and write only the validation logs: the test images are not read (the targets are the
# validation logs, and train_segmenter never reads the test split).
#
#   [MODEL=pffnet] [ARMS="labelled augmented"] [CORES=1] tune.sh <finished block workdir> <scratch workdir> <schedule name> [<block overlay>] [seed]
#
# MODEL (default hovernet) is the segmenter to tune; ARMS (default: all five) picks the arms
# to train again; CORES (default 2) the cores Snakemake may use, so that two tunings can share a
# machine; DRYRUN=1 only lists the jobs it would run
# (train_segmenter alone, if the copy of the block is intact).
#
# The seed is a segmenter seed other than the preset's first: the labelled run of the first
# seed is the judge that chose the image model's weights, and must stay as the block had it
# (training it again would choose weights and draw pairs again: another generator).
#
# <schedule name> names config/overlays/monuseg-cpu-schedule-<name>.yaml (Hover-Net) or
# config/overlays/monuseg-cpu-pffnet-schedule-<name>.yaml (PFF-Net, which also adds the model);
# <block overlay> is the generator overlay the block ran with (config/overlays/monuseg-cpu-block2.yaml for block 2; ""
# for block 1). The block's generator (prepared data, subsets, diffusion models, pairs, training
# sets) is copied with its times kept, so only train_segmenter jobs run. Run from the repository
# root (or a worktree at a fixed commit).
set -euo pipefail
block=$(realpath "$1"); scratch=$2; name=$3; block_overlay=${4:-}; seed=${5:-1}
[[ $seed != 0 ]] || { echo "seed 0 is the judge of the image weights: tune another seed" >&2; exit 1; }
model=${MODEL:-hovernet}
case $model in
  hovernet) schedule=config/overlays/monuseg-cpu-schedule-"$name".yaml ;;
  pffnet) schedule=config/overlays/monuseg-cpu-pffnet-schedule-"$name".yaml ;;
  *) echo "MODEL must be hovernet or pffnet, not $model" >&2; exit 1 ;;
esac
[[ -f $schedule ]] || { echo "no $schedule" >&2; exit 1; }
overlays=(${block_overlay:+"$block_overlay"} "$schedule")
mkdir -p "$scratch"
cp -a "$block"/. "$scratch"/
rm -rf "$scratch"/.snakemake/locks "$scratch"/.snakemake/incomplete   # the block's own run may still hold them
# The data folder may have been mounted again since the block ran (newer times), which would
# make --rerun-triggers mtime rebuild the whole generator: mark the block's results up to date,
# in the order of its DAG, before removing what this tuning trains again.
snakemake --touch --quiet --cores 1 --rerun-triggers mtime --directory "$scratch" \
  --configfile config/monuseg-cpu.yaml ${block_overlay:+"$block_overlay"}
# what the new schedule trains again (every arm of this seed), and no test scores or tables
rm -rf "$scratch"/results/monuseg/10pct/segmentation/"$model"/*/seed"$seed" "$scratch"/checkpoints \
  "$scratch"/results/table* "$scratch"/results/monuseg/10pct/segmentation/*/*/*/scores.csv \
  "$scratch"/logs/monuseg/10pct/train_segmenter_"$model"_*seed"$seed".log \
  "$scratch"/benchmarks/monuseg/10pct/train_segmenter_"$model"_*seed"$seed".tsv
targets=()
for arm in ${ARMS:-labelled augmented pretrained pretrained-real shuffled}; do
  targets+=("results/monuseg/10pct/segmentation/$model/$arm/seed$seed/validation.csv")
done
snakemake ${DRYRUN:+--dry-run} --cores "${CORES:-2}" --rerun-triggers mtime --directory "$scratch" \
  --configfile config/monuseg-cpu.yaml "${overlays[@]}" -- "${targets[@]}"
