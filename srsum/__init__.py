"""srsum: summarize long documents with SRformer (segmented recurrent cross-attention) T5/BART models.

Importing srsum registers the ``srformer_t5`` and ``srformer_bart`` model types with transformers'
Auto classes, so ``AutoModelForSeq2SeqLM.from_pretrained(checkpoint)`` works without trust_remote_code.
"""

__version__ = "0.1.0"

from .engine import VARIANTS, convert, load_model  # noqa: E402  (registers the Auto classes)

__all__ = ["VARIANTS", "convert", "load_model", "__version__"]
