"""Draw docs/figures/positions.png: how Position Interpolation squeezes positions.

Regenerate (matplotlib is needed only here; it is not a picli dependency):

    .venv/bin/pip install matplotlib
    .venv/bin/python docs/figures/positions.py

Top: each position m of the extended window L' and the position RoPE is shown.
Extrapolation (plain RoPE) goes past the trained range [0, L); interpolation maps m to
m * L / L' and stays inside it. Bottom: the rotation angle m * theta_j for the lowest and
the highest RoPE frequency (head_dim 128, theta 10000, as in LLaMA).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TRAINED, TARGET = 2048, 8192  # L and L'
FACTOR = TARGET / TRAINED
HEAD_DIM, THETA = 128, 10000.0
ORIGINAL, EXTRAPOLATED, INTERPOLATED = "#555555", "#d62728", "#1f77b4"


def frequency(j: int) -> float:
    return THETA ** (-2 * j / HEAD_DIM)


def main() -> None:
    figure = plt.figure(figsize=(10, 7.2), constrained_layout=True)
    grid = figure.add_gridspec(2, 2, height_ratios=[1.1, 1])
    top, low, high = figure.add_subplot(grid[0, :]), figure.add_subplot(grid[1, 0]), figure.add_subplot(grid[1, 1])

    positions = np.arange(TARGET)
    top.axhspan(TRAINED, TARGET, color=EXTRAPOLATED, alpha=0.08)
    top.text(5000, 3000, "positions never seen in training", color=EXTRAPOLATED)
    top.axhline(TRAINED, color=ORIGINAL, lw=0.8, ls="--")
    top.plot(positions, positions, color=EXTRAPOLATED, label="extrapolation: RoPE sees m")
    top.plot(positions, positions / FACTOR, color=INTERPOLATED, lw=2.2,
             label=f"interpolation (PI): RoPE sees m·L/L' = m/{FACTOR:g}")
    top.set(xlim=(0, TARGET), ylim=(0, TARGET), xlabel="token position m in the extended window (L' = 8192)",
            ylabel="position given to RoPE",
            title=f"PI maps L' = {TARGET} positions into the trained range [0, L = {TRAINED}), spacing L/L' = 1/{FACTOR:g}")
    top.set_yticks([0, TRAINED, 4096, 6144, TARGET], ["0", f"L = {TRAINED}", "4096", "6144", "8192"])
    top.legend(loc="upper left", frameon=False)

    slow = frequency(HEAD_DIM // 2 - 1)
    low.axhspan(0, TRAINED * slow, color=ORIGINAL, alpha=0.08)
    low.text(2600, TRAINED * slow * 0.75, "angles seen in training", color=ORIGINAL, fontsize=9)
    low.plot(positions[:TRAINED], positions[:TRAINED] * slow, color=ORIGINAL, lw=3, label="original, m < L")
    low.plot(positions[TRAINED:], positions[TRAINED:] * slow, color=EXTRAPOLATED, label="extrapolated, m ≥ L")
    low.plot(positions, positions * slow / FACTOR, color=INTERPOLATED, lw=2.2, label="interpolated")
    low.set(xlim=(0, TARGET), ylim=(0, TARGET * slow * 1.05), xlabel="position m",
            ylabel="angle m·θ (rad)", title=f"lowest frequency, θ = {slow:.2e} rad/token")
    low.legend(loc="upper left", frameon=False, fontsize=9)

    fast = frequency(0)
    near = np.arange(17)
    low_res = np.linspace(0, 16, 400)
    high.plot(low_res, np.mod(low_res * fast, 2 * np.pi), color=ORIGINAL, lw=0.8, alpha=0.5)
    high.plot(near, np.mod(near * fast, 2 * np.pi), "o", color=ORIGINAL, label="original = extrapolated")
    high.plot(near, np.mod(near * fast / FACTOR, 2 * np.pi), "s", color=INTERPOLATED,
              label=f"interpolated: neighbours {fast / FACTOR:g} rad apart")
    high.set(xlim=(-0.5, 16.5), ylim=(0, 2 * np.pi + 2.2), xlabel="position m", ylabel="angle m·θ mod 2π (rad)",
             title=f"highest frequency, θ = {fast:g} rad/token")
    high.set_yticks([0, np.pi / 2, np.pi, 3 * np.pi / 2, 2 * np.pi], ["0", "π/2", "π", "3π/2", "2π"])
    high.legend(loc="upper left", frameon=False, fontsize=9)

    output = Path(__file__).with_suffix(".png")
    figure.savefig(output, dpi=110)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
