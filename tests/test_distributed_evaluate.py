"""srsum evaluate under a launcher (issue 17): two CPU processes share the examples and write one result,
the same as one process's."""

import json

import pytest
from conftest import CNN_SAMPLE
from test_distributed import _torchrun

from srsum.evaluation import evaluate, is_main_process
from srsum.summarize import SummarizeSettings

pytestmark = pytest.mark.usefixtures("single_thread")


def test_is_main_process_follows_the_launcher_rank(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()


def test_evaluate_under_two_processes_equals_one(trained_t5, shared_data, tmp_path):
    best = str(trained_t5.run_dir / "best")
    settings = SummarizeSettings(num_beams=1, max_length=6, batch_size=2)
    single = evaluate(str(CNN_SAMPLE), model=best, limit=5, generation=settings, device="cpu",
                      output_dir=tmp_path / "one")
    out = tmp_path / "two"
    done = _torchrun("-m", "srsum.cli", "evaluate", "--model", best, "--dataset", str(CNN_SAMPLE), "--limit", "5",
                     "--num-beams", "1", "--max-length", "6", "--batch-size", "2", "--device", "cpu",
                     "--output-dir", str(out), "--json", "--quiet")
    printed = json.loads(done.stdout)  # one process printed, once
    assert printed["processes"] == 2 and single["processes"] == 1
    assert printed["rouge"] == single["rouge"] and printed["n_examples"] == 5
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.jsonl"]
    two_rows = (out / "predictions.jsonl").read_text().splitlines()
    assert two_rows == (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()
