"""Pool the union against labelled over every generator run so far, each generator once.

    python docs/records/2026-12-06-monuseg-cpu-10pct-colour-transfer/pool_generators.py

Blocks 3 and 4 of the tuned record ran with pairs as sampled; blocks 4 and 5 here with their
colours transferred. Block 4's generator has both, so there are two ways to count it once:
with its transferred pairs (the preset as it is now; `pooled_generators.csv`) or as sampled
(`pooled_generators_as_sampled.csv`). Both are written, each with its forest plot (`.png`);
no generator is counted twice.
"""

from __future__ import annotations

from pathlib import Path

from nudiff.arm_comparison import plot_pooled, write_pooled

HERE = Path(__file__).resolve().parent
TUNED = HERE.parent / "2026-12-05-monuseg-cpu-10pct-tuned"
UNION = [("augmented", "labelled")]

if __name__ == "__main__":
    block4_versions = [
        ("block4 (transferred)", HERE / "block4", "pooled_generators.csv"),
        ("block4 (as sampled)", TUNED / "block4", "pooled_generators_as_sampled.csv"),
    ]
    for block4_name, block4, out in block4_versions:
        blocks = {
            "block3 (as sampled)": TUNED / "block3/metrics.csv",
            block4_name: block4 / "metrics.csv",
            "block5 (transferred)": HERE / "block5/metrics.csv",
        }
        table = write_pooled(blocks, UNION, HERE / out)
        plot_pooled(blocks, *UNION[0], (HERE / out).with_suffix(".png"))
        print(out)
        print(table.drop(columns=["unit"]).to_string(index=False))
