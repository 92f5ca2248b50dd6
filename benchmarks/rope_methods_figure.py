"""Draw docs/figures/rope_methods.png: how much each method scales each RoPE dimension.

For every frequency index j of a LLaMA-like head (head_dim 128, theta 10000, trained window
L = 4096, target 4 x L), the plot shows inverse frequency after / before, i.e. by how much a
method slows that dimension's rotation: linear PI divides every one by the factor; yarn keeps
the fast ones, interpolates the slow ones and ramps between; ntk (a larger theta) stretches
each dimension by s^(2j/(d-2)), from 1 at the fastest to s at the slowest. The top axis marks
how many times each wavelength fits into L (YaRN's r = L / lambda), the quantity yarn's
boundaries (beta_fast 32, beta_slow 1) are defined by.

Every curve comes from picli's own functions in picli.rope.methods (the ones the self-check
compares with transformers), not from a copy here. Regenerate with the test extra installed:

    .venv/bin/python benchmarks/rope_methods_figure.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from picli import rope  # noqa: E402

HEAD_DIM, THETA, TRAINED, FACTOR = 128, 10000.0, 4096, 4.0
OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "figures" / "rope_methods.png"


def main() -> Path:
    base = rope.inverse_frequencies(THETA, HEAD_DIM)
    curves = {
        "linear (PI)": rope.inverse_frequencies(THETA, HEAD_DIM, FACTOR),
        "yarn": rope.yarn_inverse_frequencies(THETA, HEAD_DIM, FACTOR, TRAINED),
        "ntk (theta x s^(d/(d-2)))": rope.inverse_frequencies(rope.ntk_theta(THETA, FACTOR, HEAD_DIM), HEAD_DIM),
    }
    index = list(range(HEAD_DIM // 2))
    figure, axis = plt.subplots(figsize=(8, 4.2), dpi=120)
    for (label, frequencies), style in zip(curves.items(), ("-", "-", "--")):
        axis.plot(index, [before / after for before, after in zip(base, frequencies)], style, label=label, lw=2)
    kept = rope.yarn_kept_fractions(THETA, HEAD_DIM, TRAINED)
    ramp = [j for j, gamma in enumerate(kept) if 0.0 < gamma < 1.0]
    if ramp:
        axis.axvspan(ramp[0] - 1, ramp[-1] + 1, color="#dddddd", alpha=0.6, label="yarn's ramp")
    axis.set_xlabel("RoPE dimension pair j (0 = fastest rotation)")
    axis.set_ylabel("frequency divided by (1 = unchanged)")
    axis.set_title(f"Per-dimension scaling, {TRAINED} -> {int(TRAINED * FACTOR)} tokens "
                   f"(head_dim {HEAD_DIM}, theta {THETA:g})", fontsize=10)
    axis.set_ylim(0.9, FACTOR * 1.1)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=9)
    # yarn's boundaries: the dimension whose wavelength fits beta times into L (rope.methods).
    top = axis.secondary_xaxis("top")
    boundaries = {count: rope.methods.yarn_correction_dim(count, HEAD_DIM, THETA, TRAINED) for count in (32, 1)}
    top.set_xticks(list(boundaries.values()))
    top.set_xticklabels([f"wavelength fits {count}x into L" for count in boundaries], fontsize=8)
    figure.tight_layout()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT)
    return OUTPUT


if __name__ == "__main__":
    print(main())
