"""srsum: summarize long documents with SRformer (segmented recurrent cross-attention) T5/BART models.

``srsum.convert``, ``srsum.load_model`` and ``srsum.VARIANTS`` come from :mod:`srsum.engine`, imported on
first use so that ``import srsum`` (and ``srsum --help``) stays light. Importing :mod:`srsum.engine`
(which any of them does) registers the ``srformer_t5`` and ``srformer_bart`` model types with
transformers' Auto classes, so ``AutoModelForSeq2SeqLM.from_pretrained(checkpoint)`` works without
trust_remote_code.
"""

__version__ = "0.1.0"

__all__ = ["VARIANTS", "convert", "load_model", "__version__"]


def __getattr__(name: str):
    if name in ("VARIANTS", "convert", "load_model"):
        from srsum import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'srsum' has no attribute {name!r}")
