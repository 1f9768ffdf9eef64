"""Pool the pre-training comparisons over the generators that have them, each generator once.

    python docs/records/2026-12-06-monuseg-cpu-10pct-pretrain/pool_pretrain.py

Block 4 (the tuned record's ``block4-pretrain``: pairs as sampled, segmenter seed 0) and block 5
(here: colour-transferred pairs, seeds 0 and 1). Writes ``pooled.csv`` and one forest plot per
comparison (``pooled_<arm>_vs_<control>.png``).
"""

from __future__ import annotations

from pathlib import Path

from nudiff.arm_comparison import plot_pooled, write_pooled

HERE = Path(__file__).resolve().parent
TUNED = HERE.parent / "2026-12-05-monuseg-cpu-10pct-tuned"
COMPARISONS = [("pretrained", "pretrained-real"), ("pretrained-real", "labelled"), ("pretrained", "labelled")]

if __name__ == "__main__":
    blocks = {
        "block4 (as sampled)": TUNED / "block4-pretrain/metrics.csv",
        "block5 (transferred)": HERE / "block5/metrics.csv",
    }
    table = write_pooled(blocks, COMPARISONS, HERE / "pooled.csv")
    for arm, control in COMPARISONS:
        plot_pooled(blocks, arm, control, HERE / f"pooled_{arm}_vs_{control}.png")
    print(table.drop(columns=["unit"]).to_string(index=False))
