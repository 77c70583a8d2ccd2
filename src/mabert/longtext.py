"""Documents longer than the model's length L (its approximators' `softmax_input_size`, 128 by default).

Strategies, for single texts (text pairs are always truncated, longest first, as in GLUE):
- ``truncate``: the first L − 2 tokens (the official MA-BERT IMDb evaluation);
- ``head-tail``: the first quarter of the budget from the head and the rest from the tail (Sun et al. 2019
  found head 128 + tail 382 of 510 the best single segment for IMDb);
- ``windows``: windows of L − 2 tokens starting every `stride` tokens (default half a window), the last one
  ending at the document's end; the document's logits are the mean of its windows' logits.

`document_logits` runs any model through a call function on length-sorted, padded batches, so the same code
serves PyTorch models, ONNX Runtime sessions and the fused graph.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .errors import MABertError

STRATEGIES = ("truncate", "head-tail", "windows")


def max_length_of(config, default: int = 128) -> int:
    """L: the approximators' input size for MA models, else `default` (this project's training length)."""
    return int(getattr(config, "softmax_input_size", None) or default)


def _pieces(ids: list[int], budget: int, strategy: str, stride: int | None) -> list[list[int]]:
    if len(ids) <= budget or strategy == "truncate":
        return [ids[:budget]]
    if strategy == "head-tail":
        head = budget // 4
        return [ids[:head] + ids[len(ids) - (budget - head):]]
    step = stride or max(budget // 2, 1)
    starts = list(range(0, len(ids) - budget, step)) + [len(ids) - budget]
    return [ids[s:s + budget] for s in starts]


def segments(tokenizer, texts, max_length: int, strategy: str = "truncate", stride: int | None = None,
             text_pairs=None) -> list[tuple[int, list[int], list[int]]]:
    """(document index, input_ids, token_type_ids) of every model input, each at most `max_length` tokens."""
    if strategy not in STRATEGIES:
        raise MABertError(f"unknown long-text strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if stride is not None and stride < 1:
        raise MABertError(f"--stride must be a positive number of tokens, got {stride}")
    texts = list(texts)
    if text_pairs is not None:
        if strategy != "truncate":
            raise MABertError(f"--long-text {strategy} is for single texts; text pairs are truncated")
        encoded = tokenizer(texts, list(text_pairs), truncation=True, max_length=max_length)
        types = encoded.get("token_type_ids") or [[0] * len(ids) for ids in encoded["input_ids"]]
        return [(i, ids, tt) for i, (ids, tt) in enumerate(zip(encoded["input_ids"], types))]
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise MABertError(f"a length of {max_length} leaves no room for text beside the special tokens")
    out = []
    for index, ids in enumerate(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]):
        for piece in _pieces(ids, budget, strategy, stride):
            full = tokenizer.build_inputs_with_special_tokens(piece)
            out.append((index, full, [0] * len(full)))
    return out


def document_logits(call: Callable[[dict], np.ndarray], tokenizer, texts, max_length: int,
                    strategy: str = "truncate", stride: int | None = None, text_pairs=None, batch_size: int = 32,
                    pad_to: int | None = None, progress: bool = False) -> np.ndarray:
    """Logits (documents × outputs) of `call` over every document, long ones split per `strategy`.

    `call(batch)` takes int64 arrays input_ids, attention_mask, token_type_ids (batch × length) and returns
    logits (batch × outputs). Inputs are sorted by length and padded to the longest in each batch (to
    `pad_to` for models that need a fixed length), so order and padding do not change the result."""
    texts = list(texts)
    if not texts:
        raise MABertError("no documents to score")
    pieces = segments(tokenizer, texts, max_length, strategy, stride, text_pairs)
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i][1]))
    pad_id = tokenizer.pad_token_id or 0
    sums, counts = None, np.zeros(len(texts))
    with tqdm(total=len(pieces), desc="scoring", unit="input", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            chosen = [pieces[i] for i in order[start:start + batch_size]]
            width = pad_to or max(len(ids) for _, ids, _ in chosen)
            batch = {name: np.full((len(chosen), width), fill, dtype=np.int64)
                     for name, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0))}
            for row, (_, ids, types) in enumerate(chosen):
                batch["input_ids"][row, :len(ids)] = ids
                batch["attention_mask"][row, :len(ids)] = 1
                batch["token_type_ids"][row, :len(ids)] = types
            logits = np.asarray(call(batch), dtype=np.float64)
            if sums is None:
                sums = np.zeros((len(counts), logits.shape[-1]))
            for (doc, _, _), row in zip(chosen, logits):
                sums[doc] += row
                counts[doc] += 1
            bar.update(len(chosen))
    return sums / counts[:, None]
