"""Summary generation for srsum (the CLI and Python callers use ``generate``).

TEMPORARY: delegates to ``model.generate``; the fixed-shape fast decoder of issue 5 replaces the body
with the same signature.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(model, input_ids, attention_mask=None, *, num_beams: int = 1, max_new_tokens: int = 128,
             min_new_tokens: int = 0, length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
             do_sample: bool = False, **kwargs) -> torch.Tensor:
    """Generate summaries: (B, n) input ids -> (B, L) output ids (decoder start token first, padded)."""
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams,
                          max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                          length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                          do_sample=do_sample, **kwargs)
