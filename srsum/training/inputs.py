"""The training and validation data (loading a split and tokenizing it), and the start model of a run built
from a config.json (``--config``)."""

from __future__ import annotations

from pathlib import Path

from srsum.data import Example, load_examples
from srsum.errors import SrsumError
from srsum.reporting import Reporter
from srsum.training.config import TrainingConfig


def load_split(config: TrainingConfig, split: str, limit: int | None, what: str) -> list[Example]:
    examples = load_examples(config.dataset, split=split, text_column=config.text_column,
                             summary_column=config.summary_column, limit=limit)
    usable = [e for e in examples if e.summary is not None and e.summary.strip() and e.text.strip()]
    if not usable:
        raise SrsumError(f"{what} split {split!r} of {config.dataset!r} has no examples with both an article and a "
                         "reference summary; name the columns with --text-column/--summary-column")
    return usable


def tokenize_split(tokenizer, model_config, examples: list[Example], config: TrainingConfig, reporter: Reporter,
                   what: str):
    """Token rows of ``examples``, with the source prefix ``model_config`` asks for (as summarize uses it)."""
    from srsum.tokenization import encode_examples

    truncated: list[int] = []
    with reporter.progress(f"tokenizing {what}", len(examples)) as advance:
        rows = encode_examples(tokenizer, model_config, [e.text for e in examples], [e.summary for e in examples],
                               config.max_source_length, config.max_target_length,
                               on_truncate=lambda i, length, limit: truncated.append(length), advance=advance)
    if truncated:
        reporter.warn(f"{len(truncated)} of {len(examples)} {what} articles are longer than the max source length "
                      f"{config.max_source_length} (longest {max(truncated)} tokens) and were truncated")
    return rows


def config_file(config_path: str) -> Path:
    """The config.json that ``--config`` names (the file, or the one in the folder); SrsumError if there is none."""
    path = Path(config_path).expanduser()
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise SrsumError(f"--config: {config_path} is neither a config.json file nor a folder holding one")
    return file


def new_model_folder(config_path: str, tokenizer, folder: Path, seed: int) -> Path:
    """A randomly initialised (``seed``) T5/BART built from ``config_path`` (a config.json or a folder holding one),
    saved with ``tokenizer`` into ``folder`` as a plain model folder, which the engine then converts. Offline:
    nothing is downloaded. SrsumError (one line) for a config that is not a T5/BART one or a tokenizer with
    more tokens than the config's vocabulary."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    file = config_file(config_path)
    try:
        model_config = AutoConfig.from_pretrained(str(file))
    except (OSError, ValueError, KeyError) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise SrsumError(f"--config: cannot read {file} as a model config ({reason})") from None
    if model_config.model_type not in ("t5", "bart"):
        raise SrsumError(f"--config: {file} describes a {model_config.model_type!r} model; srsum trains T5 and BART")
    if len(tokenizer) > model_config.vocab_size:
        raise SrsumError(f"--tokenizer has {len(tokenizer)} tokens but the config's vocab_size is "
                         f"{model_config.vocab_size}; use a matching tokenizer or raise vocab_size")
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)  # the same start model on every process and in every run with this seed
    try:
        model = AutoModelForSeq2SeqLM.from_config(model_config)
    finally:
        torch.set_rng_state(generator_state)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

