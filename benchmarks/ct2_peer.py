"""CTranslate2 as a benchmark peer (issue 13): convert a random model, decode with it, time it.

``pip install -e .[bench]`` installs it (``ctranslate2>=4.5``). CTranslate2's converter reads a model folder
(``TransformersConverter``); the benchmarks' models have random weights and no tokenizer, so ``convert``
saves the model with ``save_pretrained`` and gives the converter a stand-in vocabulary (one token string per
id: ``t<id>``, with the model's pad/EOS/unk/BOS ids under their usual names) instead of loading a tokenizer.
Source ids map to those strings one to one, so CTranslate2 sees exactly the ids the other systems see.

Two things the converter needs that a random model lacks (checked with ctranslate2 4.8.5, transformers 5.24):

* a tokenizer: with none saved, transformers 5 builds an almost empty T5 tokenizer (104 tokens) and the T5
  loader then pads the vocabulary with duplicate ``<extra_id_*>`` names; hence the stand-in vocabulary.
* BART: the loader reads ``config.normalize_before``, an attribute ``BartConfig`` does not define (the hub's
  bart-base ``config.json`` carries ``"normalize_before": false`` as an extra key; a config built in code
  does not: ``AttributeError: 'BartConfig' object has no attribute 'normalize_before'``, as
  OpenNMT/CTranslate2#803 reports for Marian). ``convert`` sets it to False (BART is post-norm).

The converted model matches the PyTorch one: on a 64-token random input, CTranslate2's ``score_batch``
log-probabilities of Hugging Face's greedy tokens equal Hugging Face's to 3 decimals (t5-small and bart-base).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

NOT_INSTALLED = "skipped: ctranslate2 not installed"


def available() -> bool:
    return importlib.util.find_spec("ctranslate2") is not None


class StandInVocabulary:
    """What the converter asks of a tokenizer: ``get_vocab``, ``convert_ids_to_tokens`` and the special tokens."""

    def __init__(self, config):
        self.names = [f"t{i}" for i in range(config.vocab_size)]
        bart = config.model_type == "bart"
        special = {config.pad_token_id: "<pad>", config.eos_token_id: "</s>", (3 if bart else 2): "<unk>"}
        if bart:
            special[config.bos_token_id] = "<s>"
        for index, name in special.items():
            self.names[index] = name
        self.pad_token, self.eos_token, self.unk_token = "<pad>", "</s>", "<unk>"
        self.bos_token = "<s>" if bart else None
        self.ids = {name: index for index, name in enumerate(self.names)}

    def get_vocab(self) -> dict:
        return dict(self.ids)

    def convert_ids_to_tokens(self, index: int) -> str:
        return self.names[index]

    def tokens(self, ids) -> list[list[str]]:
        return [[self.names[i] for i in row] for row in ids.tolist()]


def convert(model, folder: Path) -> StandInVocabulary:
    """Save ``model`` (a random t5-small / bart-base) under ``folder/hf`` and convert it to ``folder/ct2``
    (weights kept in float32: the compute type is chosen when the model is loaded)."""
    from ctranslate2.converters import TransformersConverter

    if model.config.model_type == "bart" and not hasattr(model.config, "normalize_before"):
        model.config.normalize_before = False
    vocabulary = StandInVocabulary(model.config)

    class Converter(TransformersConverter):
        def load_tokenizer(self, *args, **kwargs):
            return vocabulary

    with contextlib.redirect_stdout(sys.stderr):  # the cell's stdout carries only its JSON
        model.save_pretrained(folder / "hf")
        Converter(str(folder / "hf")).convert(str(folder / "ct2"), quantization=None, force=True)
    return vocabulary


def compute_type(system: str, dtype: str) -> str:
    """``ctranslate2``: the cell's dtype; ``ctranslate2-int8``: int8 weights (int8_float32 on CPU)."""
    if system == "ctranslate2-int8":
        return "int8" if dtype == "float32" else f"int8_{dtype}"
    return dtype


def translator(folder: Path, device: str, compute: str, threads: int | None):
    import ctranslate2

    return ctranslate2.Translator(str(folder / "ct2"), device="cuda" if device.startswith("cuda") else "cpu",
                                  compute_type=compute, inter_threads=1, intra_threads=threads or 0)


def decode(model, source: list[list[str]], beams: int, length: int, stamps: list | None = None) -> float:
    """Decode exactly ``length`` tokens per example (EOS banned before; the end token kept, so every
    hypothesis has ``length`` tokens: checked) and return the wall time in seconds. With ``stamps`` (greedy
    only: CTranslate2 calls back per step only then), the time of each step of example 0 is appended."""
    def clock(step):
        if step.batch_id == 0:
            stamps.append(time.perf_counter())

    callback = clock if stamps is not None and beams == 1 else None
    start = time.perf_counter()
    results = model.translate_batch(source, beam_size=beams, max_input_length=0, max_decoding_length=length,
                                    min_decoding_length=length, return_end_token=True, callback=callback)
    seconds = time.perf_counter() - start
    lengths = {len(h) for result in results for h in result.hypotheses}
    if lengths != {length}:
        raise RuntimeError(f"ctranslate2 decoded {sorted(lengths)} tokens, not {length}")
    return seconds


@contextlib.contextmanager
def converted(model):
    """A temporary folder holding ``model`` converted; yields (folder, vocabulary). Drops its own reference to
    ``model`` once converted (pass it without keeping one, and the PyTorch weights leave memory)."""
    with tempfile.TemporaryDirectory(prefix="srsum-ct2-") as tmp:
        folder = Path(tmp)
        vocabulary = convert(model, folder)
        del model
        gc.collect()
        yield folder, vocabulary
