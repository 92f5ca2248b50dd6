"""Greedy decoding for RULER: the predictions `model.generate(ids, max_new_tokens=budget,
do_sample=False)` makes, with the KV cache, in batches where memory allows.

What RULER keeps of a generation (scripts/pred/model_wrappers.py HuggingFaceModel, at
c3f5e3b): generate stops a sequence at the end-of-sequence token and pads it afterwards with
that same token; the text is decoded with `skip_special_tokens=True`. So a prediction is the
decoded tokens before the first end-of-sequence token, and nothing after it can change it:
picli stops each sequence there, and drops it from its batch so that the others run on
without it. Nothing else is shared between prompts: each has its own cache from its own
prefill, so its prediction is what plain generate gives it alone (tests/test_ruler.py checks
token equality on every task). Prompts of one task and length run together, left-padded,
with generate's position ids (cumsum of the attention mask); on a CPU batching buys no
speed (benchmarks/verify.py measured it for passkey), so there they run one at a time. On a
GPU a batched row goes through other kernels than the prompt alone would, so in half
precision a near-tie can break differently: batch_size=1 is generate's own computation.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  # generated before the first stop token (which is not included)
    stopped: bool  # ended at a stop token rather than at the budget


def stop_token_ids(loaded) -> tuple[int, ...]:
    """The end-of-sequence ids generate stops at: the generation config's, else the tokenizer's."""
    configured = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = loaded.tokenizer.eos_token_id
    if configured is None:
        return ()
    return tuple(configured) if isinstance(configured, (list, tuple)) else (int(configured),)


def greedy_generate(loaded, prompts: list[list[int]], budget: int, batch_size: int = 1,
                    on_done: Callable[[int], None] | None = None) -> list[Generation]:
    """Each prompt's greedy continuation, up to `budget` tokens or its first stop token."""
    stops = stop_token_ids(loaded)
    results: list[Generation | None] = [None] * len(prompts)
    # Similar lengths together: less padding in a batch.
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for index, generation in zip(chunk, _generate_batch(loaded, [prompts[index] for index in chunk], budget, stops)):
            results[index] = generation
        if on_done:
            on_done(len(chunk))
    return results  # type: ignore[return-value]


def _generate_batch(loaded, prompts: list[list[int]], budget: int, stops: tuple[int, ...]) -> list[Generation]:
    import torch
    from transformers import DynamicCache

    model, device = loaded.model, loaded.device
    # transformers renamed past_key_values to cache (5.2x); pass whichever this release takes.
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    width = max(len(prompt) for prompt in prompts)
    pad = stops[0] if stops else 0
    input_ids = torch.tensor([[pad] * (width - len(prompt)) + prompt for prompt in prompts], device=device)
    if all(len(prompt) == width for prompt in prompts):
        # As generate does: no padding, no mask (SDPA then takes its causal path), positions 0..n-1.
        mask = None
        positions = torch.arange(width, device=device).unsqueeze(0).expand(len(prompts), -1)
    else:
        mask = torch.tensor([[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts], device=device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    generated: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    live = list(range(len(prompts)))  # rows still generating, in cache order
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_name: cache}).logits
        for step in range(budget):
            next_tokens = logits[:, -1].float().argmax(-1).tolist()
            keep = []
            for row, (prompt_index, token) in enumerate(zip(live, next_tokens)):
                if token in stops:
                    stopped[prompt_index] = True
                else:
                    generated[prompt_index].append(token)
                    keep.append(row)
            if not keep or step == budget - 1:
                break
            if len(keep) < len(live):
                rows = torch.tensor(keep, device=device)
                cache.batch_select_indices(rows)
                positions = positions[rows]
                mask = mask[rows] if mask is not None else None
                live = [live[row] for row in keep]
                next_tokens = [next_tokens[row] for row in keep]
            positions = positions[:, -1:] + 1
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            logits = model(input_ids=torch.tensor(next_tokens, device=device).unsqueeze(-1), attention_mask=mask,
                           position_ids=positions, use_cache=True, logits_to_keep=1, **{cache_name: cache}).logits
    return [Generation(tokens, done) for tokens, done in zip(generated, stopped)]


def plain_generate(loaded, prompt: list[int], budget: int) -> Generation:
    """The obvious alternative, for tests and benchmarks: `model.generate` with the whole budget,
    greedy, stopping where picli stops; its tokens cut at the first stop token as RULER's text is."""
    import torch

    stops = stop_token_ids(loaded)
    with torch.inference_mode():
        output = loaded.model.generate(torch.tensor([prompt], device=loaded.device), max_new_tokens=budget,
                                       do_sample=False, eos_token_id=list(stops) or None,
                                       pad_token_id=stops[0] if stops else None)
    tokens = output[0, len(prompt):].tolist()
    for position, token in enumerate(tokens):
        if token in stops:
            return Generation(tokens[:position], True)
    return Generation(tokens, False)


def auto_batch(loaded, length: int, prompts: int) -> int:
    """As many prompts per batch as half the free memory holds: per prompt its KV cache at
    `length`, one layer's activations, and under eager attention its score matrix. One on a CPU."""
    from .. import modeling

    if loaded.device.type == "cpu":
        return 1
    free = modeling.available_memory(loaded.device)
    if free is None:
        return 1
    per_prompt = (modeling.kv_bytes_per_token(loaded.config, loaded.dtype) * length
                  + modeling.working_bytes(loaded.config, loaded.dtype, length))
    if loaded.attention == "eager":
        text = getattr(loaded.config, "text_config", None) or loaded.config
        per_prompt += 2 * text.num_attention_heads * length * length * modeling.element_size(loaded.dtype)
    return max(1, min(prompts, int(free * 0.5 // max(per_prompt, 1))))
