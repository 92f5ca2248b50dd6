"""The progress callback every long-running core function takes as `on_event`.

The core never prints: it calls `on_event(event)` with a plain dict, and the CLI's
`render.progress()` turns the events into messages and progress bars on stderr. Kinds:

    {"kind": "message", "text": ...}                              a line for the user
    {"kind": "warning", "text": ...}                              a line the user must not miss
    {"kind": "progress", "task": ..., "done": n, "total": n}      a bar ("unit" defaults to bytes)
    {"kind": "settings", "settings": {...}, ...}                  finetune's resolved settings
    {"kind": "step", "step": n, "loss": ..., "total_steps": n}    one finished training step

None means nobody listens.
"""

from __future__ import annotations

from typing import Callable

Events = Callable[[dict], None] | None
