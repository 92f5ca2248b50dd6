"""picli: extend a RoPE model's context window by Position Interpolation, verify it, publish it.

Layout (one module per capability; the CLI in cli.py only parses, calls one function, renders):
  cli.py         the commands and the one error boundary
  render.py      everything that prints (rich tables, progress, --json)
  checkpoint.py  MODEL -> a local checkpoint (dir, GGUF, Hub id, alias, embedded SmolLM2)
  rope/          RoPE families, the two config schemas, the methods, what each runtime will read
  extend.py      plan and apply `picli extend`, the self-check
  inspector.py   `picli inspect`: the report about one checkpoint
  gguf_io.py     GGUF metadata read/rewrite, GGUF -> safetensors import
  provenance.py  picli.json and .picli/last.json
  files.py       atomic writes and staged directories
"""

__version__ = "0.1.0"
