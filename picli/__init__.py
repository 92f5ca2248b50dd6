"""picli: extend a RoPE model's context window by Position Interpolation, verify it, publish it.

Layout: one module per capability; the CLI in cli.py only parses, calls one function, renders.
(tests/test_architecture.py checks that every module is listed here.)

The commands and what they print:
  __main__.py          `python -m picli` (and `accelerate launch -m picli`) runs the CLI
  cli.py               the commands and the one error boundary
  render.py            everything that prints (rich tables, progress, --json); the only rich import
  docgen.py            docs/commands.md generated from the CLI's own --help
  errors.py            PicliError and its named kinds: errors the user can fix, with a hint
  events.py            the on_event progress callback every long-running core function takes

One module per verb:
  inspector.py         `picli inspect`: what a checkpoint is and what each runtime will do with it
  extend.py            `picli extend`: plan and apply PI (or yarn, or ntk) into a new checkpoint
  self_check.py        extend's proof: what the installed transformers computes from the written config
  verify.py            `picli verify`: passkey k_max and perplexity, for a model and optionally a baseline
  finetune.py          `picli finetune`: the PI paper's short fine-tune at the new window
  finetune_steps.py    its pieces: setup, one optimizer step, evaluation, checkpoint, export
  finetune_plan.py     `picli finetune --plan`: memory per device (1..64 devices) from config.json alone, time where probed
  finetune_output.py   what finetune writes: pickle-free resumable checkpoints, and the final model
  hub.py               `picli push`: publish a checkpoint to the Hub, after checking it
  card.py              the model card (README.md) that `picli push` publishes and `picli card` writes

What the verbs share:
  checkpoint.py        MODEL -> a local checkpoint (dir, GGUF, Hub id, alias, embedded SmolLM2), its files read
  rope/                RoPE, by concern:
    rope/families.py   the family table: how each model_type stores RoPE in config.json
    rope/schema.py     reading and writing RoPE in config.json's two schemas
    rope/methods/      the methods, one home each, registered by name (METHODS):
      rope/methods/base.py    the format-neutral state and plan, and the Method base class
      rope/methods/linear.py  linear Position Interpolation (PI), the default
      rope/methods/yarn.py    YaRN: kept fast dimensions, interpolated slow ones, attention temperature
      rope/methods/ntk.py     static NTK-aware scaling: a larger theta
    rope/planner.py    the rules every method obeys, once: stacking, the window, the target, the factor
    rope/config_plan.py  config.json in, the method's config.json out (read, plan, write both schemas)
    rope/gguf.py       a GGUF's RoPE metadata as the methods see it, and the metadata a plan writes
    rope/runtimes.py   what transformers 4.x/5.x, vLLM and llama.cpp will do with a config
    rope/values.py     the checks every RoPE value passes before picli computes with it
  gguf_io.py           GGUF metadata read/rewrite, GGUF -> safetensors import
  modeling.py          a model as picli runs it: loading, memory checks, body and head apart
  kv_cache.py          the one KV-cache estimate, layer by layer (global, sliding, chunked, none)
  passkey.py           passkey retrieval as the PI paper measures it (prompts, scoring, k_max)
  perplexity.py        sliding-window perplexity, as the PI paper and YaRN measure it
  ruler/               RULER's synthetic long-context tasks, offline, by concern:
    ruler/tasks.py     the task table: templates, answer prefixes, tokens to generate, metrics
    ruler/sources.py   word lists, the noise sentence, the essay haystack (built in or --haystack)
    ruler/generators.py  one sample of each task family as text, from its own seeded generator
    ruler/prompts.py   plain or chat template, the haystack fit, the suite of every sample
    ruler/decoding.py  greedy decoding with the KV cache: generate's predictions, batched
    ruler/scoring.py   RULER's post-processing and metrics, both effective lengths
    ruler/run.py       a run on one model: predictions, scores, averages, the report
  textdata.py          text to evaluate or train on: files, folders, JSON Lines, a Hub dataset
  training.py          what a fine-tune trains: settings resolved once, the LR schedule, the loss module, LoRA
  provenance.py        picli's records (picli.json, picli-verify.json, .picli/last.json): the only owner
  hub_errors.py        talking to the Hub: the one error table and repo-id rule, for downloads and push
  files.py             atomic writes and staged directories: nothing is ever half-written
  class_defaults.py    what the installed transformers' config class fills in for keys a config leaves out
"""

__version__ = "0.1.0"

# Configs are read as the installed transformers reads them: the keys a file leaves out come
# from its config class (registered here, so every caller of picli.rope gets it; transformers
# itself is imported only when a key is missing).
from . import class_defaults as _class_defaults  # noqa: E402,F401
