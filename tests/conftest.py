"""Shared fixtures: tiny random T5 and BART models (nothing downloaded) and the shared data folder."""

from pathlib import Path

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_t5_config(vocab_size=120, **overrides):
    fields = dict(vocab_size=vocab_size, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                  num_decoder_layers=2, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                  eos_token_id=1)
    fields.update(overrides)
    return T5Config(**fields)


def tiny_bart_config(vocab_size=120, **overrides):
    fields = dict(vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                  decoder_ffn_dim=64, max_position_embeddings=256, dropout=0.0, attention_dropout=0.0,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                  forced_bos_token_id=None, forced_eos_token_id=None)
    fields.update(overrides)
    return BartConfig(**fields)


def hf_generate(model, **kwargs):
    """Hugging Face's own generate loop, also on srsum's SRformer classes (whose ``generate`` runs srsum's
    decoder): the reference the decoder is compared with."""
    from transformers import GenerationMixin

    return GenerationMixin.generate(model, **kwargs)


def tiny_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    if family == "t5":
        return T5ForConditionalGeneration(tiny_t5_config(**overrides)).eval()
    return BartForConditionalGeneration(tiny_bart_config(**overrides)).eval()


def padded_batch(family: str, lengths=(40, 29), vocab_size=120, seed=1):
    """Random input ids with right padding to the longest length, and the attention mask."""
    gen = torch.Generator().manual_seed(seed)
    pad = 0 if family == "t5" else 1
    n = max(lengths)
    ids = torch.randint(3, vocab_size, (len(lengths), n), generator=gen)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = ids.masked_fill(mask == 0, pad)
    return ids, mask


@pytest.fixture(params=["t5", "bart"])
def family(request):
    return request.param


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it sits beside the checkout in CI)")
    return SHARED_DATA


# --- fixtures for the CLI, training and summarize tests (appended; see tests/test_cli.py) ---------------

CNN_SAMPLE = SHARED_DATA / "cnn_dailymail" / "cnn_dailymail-test-sample.jsonl"
TOKENIZER_DIRS = {"t5": SHARED_DATA / "tokenizers" / "t5", "bart": SHARED_DATA / "tokenizers" / "bart-base"}


@pytest.fixture(scope="session")
def single_thread():
    """Run torch on one thread: on a busy 2-core machine OpenMP threads spin-wait and tiny models slow 10-50x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_tiny_pretrained(folder: Path, family: str) -> Path:
    """A tiny random T5/BART with the real tokenizer's vocabulary, saved with that tokenizer (a local model folder)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (real tokenizers and data live there)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIRS[family]))
    tiny_model(family, vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, single_thread):
    return save_tiny_pretrained(tmp_path_factory.mktemp("tiny-t5"), "t5")


@pytest.fixture(scope="session")
def tiny_bart_dir(tmp_path_factory, single_thread):
    return save_tiny_pretrained(tmp_path_factory.mktemp("tiny-bart"), "bart")


def tiny_training_config(model_dir, output_dir, **overrides):
    """Settings for a few-second training run on real CNN/DailyMail rows (8 steps: 2 epochs of 4)."""
    from srsum.training import TrainingConfig

    fields = dict(model=str(model_dir), dataset=str(CNN_SAMPLE), train_split="test", validation_split="test",
                  train_limit=8, eval_samples=2, batch_size=2, epochs=2, max_source_length=64, max_target_length=16,
                  seg_size=16, learning_rate=1e-3, logging_steps=1, output_dir=str(output_dir))
    fields.update(overrides)
    return TrainingConfig(**fields)


@pytest.fixture(scope="session")
def trained_t5(tmp_path_factory, tiny_t5_dir):
    """A finished 8-step srformer training run of the tiny T5 under <tmp>/models/run-t5 (TrainResult)."""
    from srsum.training import train

    root = tmp_path_factory.mktemp("workdir")
    return train(tiny_training_config(tiny_t5_dir, root / "models" / "run-t5"))


@pytest.fixture
def compile_count(monkeypatch):
    """Compile the step with a backend that runs the traced graph as is and counts the graphs traced."""
    import srsum.decoding

    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    monkeypatch.setattr(srsum.decoding, "compile_options",
                        lambda device: {"fullgraph": True, "dynamic": False, "backend": counting_backend})
    yield graphs
    torch._dynamo.reset()


def interrupt_generate(monkeypatch, at_call: int) -> None:
    """Make srsum.decoding.generate raise KeyboardInterrupt (Ctrl-C) on its ``at_call``-th call (1-based)."""
    import srsum.decoding

    real_generate, calls = srsum.decoding.generate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(srsum.decoding, "generate", interrupted)
