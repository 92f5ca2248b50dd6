"""`python -m picli` runs the CLI (also what `accelerate launch -m picli` needs)."""

from picli.cli import main

main()
