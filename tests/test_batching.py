"""Batch sizes (srsum.batching): fixed chunks, or ``--batch-size auto`` fitted to the memory left per batch."""

import pytest
from typer.testing import CliRunner

from srsum import batching
from srsum.cli import app
from srsum.data import Example
from srsum.errors import UsageError
from srsum.reporting import Reporter
from srsum.summarize import SummarizeSettings, load_summarizer, summarize_examples

from conftest import tiny_t5_config


def test_parse_batch_size():
    assert batching.parse_batch_size("auto") == "auto" and batching.parse_batch_size(" AUTO ") == "auto"
    assert batching.parse_batch_size("8") == 8 and batching.parse_batch_size(3) == 3
    for bad in ("0", "-1", "x", "2.5", True, None):
        with pytest.raises(UsageError, match="--batch-size must be a positive number of articles or auto"):
            batching.parse_batch_size(bad)


def test_fixed_sizes_chunk_and_auto_fits_each_batch_to_its_longest_article():
    assert batching.batch_sizes([9, 7, 5, 3, 1], 2) == [2, 2, 1]
    lengths = [1000, 900, 400, 300, 200, 100, 100, 100]
    sizes = batching.batch_sizes(lengths, "auto", cost=lambda n: n, budget=1000)
    assert sizes == [1, 1, 2, 4]  # 1000 and 900 alone, then 2 x 400, then the short ones 4 at a time (200 x 4)
    assert sum(sizes) == len(lengths)
    assert batching.batch_sizes([10**9], "auto", cost=lambda n: n, budget=1) == [1]  # never below one article
    assert batching.batch_sizes([1] * 100, "auto", cost=lambda n: n, budget=10**9) == [64, 36]


def test_the_estimate_grows_with_the_article_and_its_beams_and_blocks_bound_the_encoder():
    config = tiny_t5_config()
    cost = lambda n, rows=1, block=512: batching.article_bytes(config, n, rows, 64, 4, block)  # noqa: E731
    assert cost(2048) > cost(1024) > cost(512)
    assert cost(1024, rows=4) > cost(1024)
    assert cost(8192, block=None) > cost(8192, block=512)  # unblocked: n x n scores


def test_auto_batches_summarize_as_batches_of_one(trained_t5, monkeypatch):
    summarizer = load_summarizer(str(trained_t5.run_dir / "best"), device="cpu", dtype="float32")
    texts = [" ".join(f"Sentence {i} of article {k}." for i in range(3 + 4 * k)) for k in range(5)]
    examples = [Example(f"a{k}", text) for k, text in enumerate(texts)]
    settings = dict(num_beams=2, max_length=5, min_length=5)
    one = summarize_examples(summarizer, examples, SummarizeSettings(batch_size=1, **settings))
    seen = []
    real = batching.batch_sizes
    monkeypatch.setattr(batching, "batch_sizes", lambda *a: seen.append(real(*a)) or seen[-1])
    monkeypatch.setattr(batching, "article_bytes", lambda config, n, rows, steps, size, block: n)  # bytes = tokens
    monkeypatch.setattr(batching, "memory_left", lambda device: 2 * 100)  # half of it: 100 "bytes"
    notes = []
    reporter = Reporter()
    monkeypatch.setattr(reporter, "info", notes.append)
    auto = summarize_examples(summarizer, examples, SummarizeSettings(batch_size="auto", **settings), reporter)
    assert auto == one
    assert sum(seen[0]) == 5 and len(seen[0]) > 1 and seen[0] == sorted(seen[0])  # longest first: fewer per batch
    assert any(note.startswith("batch size auto: ") for note in notes)


def test_the_cli_takes_auto_and_refuses_nonsense(tiny_t5_dir, tmp_path):
    article = tmp_path / "a.txt"
    article.write_text("The council met on Tuesday to discuss the budget for schools and roads. " * 3)
    runner = CliRunner()
    done = runner.invoke(app, ["summarize", str(article), "--model", str(tiny_t5_dir), "--max-length", "3",
                               "--batch-size", "auto"])
    assert done.exit_code == 0, done.output
    refused = runner.invoke(app, ["summarize", str(article), "--model", str(tiny_t5_dir), "--batch-size", "0"])
    assert refused.exit_code == 2 and "--batch-size must be a positive number of articles or auto" in refused.output
