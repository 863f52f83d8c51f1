"""benchmarks/decode.py's CTranslate2 peer (issue 13): skipped rows without the package, and (with it) a
converted random model that scores like the PyTorch one."""

import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("decode_bench", ROOT / "benchmarks" / "decode.py")
decode_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(decode_bench)  # puts benchmarks/ on sys.path (common, ct2_peer)
import ct2_peer  # noqa: E402


def test_without_ctranslate2_the_row_says_skipped_and_the_report_shows_it(monkeypatch):
    monkeypatch.setattr(ct2_peer, "available", lambda: False)
    cell = dict(model="t5-small", n=1024, batch=1, beams=1, system="ctranslate2", step="ct2", new_tokens=8,
                seg_size=64, device="cpu", dtype="float32", threads=1, ct2_repeats=1)
    row = decode_bench.measure(cell, "cpu")  # no process started: the check comes first
    assert row["skipped"] == "skipped: ctranslate2 not installed"
    assert decode_bench.run_cell(cell)["skipped"] == "skipped: ctranslate2 not installed"
    table = decode_bench.report({"cells": [row], "encoder": []})
    assert "| ctranslate2 | ct2 | skipped: ctranslate2 not installed |" in table


def test_ct2_systems_are_run_once_and_unknown_systems_refused():
    triples = decode_bench.runs(["peer", "ctranslate2", "ctranslate2-int8"], ["eager"], "cpu", [64, 128])
    assert triples == [("peer", "hf", 64), ("ctranslate2", "ct2", 64), ("ctranslate2-int8", "ct2", 64)]
    with pytest.raises(SystemExit):
        decode_bench.runs(["ctranslate"], ["eager"], "cpu", [64])


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_converted_model_scores_like_the_pytorch_model_and_decodes_exactly_the_asked_length(family):
    pytest.importorskip("ctranslate2")
    model = tiny_model(family)
    ids = torch.randint(3, 120, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = torch.randint(3, 120, (2, 6), generator=torch.Generator().manual_seed(1))
        reference = torch.log_softmax(model(input_ids=ids, labels=labels).logits, -1)
        reference = reference.gather(-1, labels[..., None])[..., 0]
    with ct2_peer.converted(model) as (folder, vocabulary):
        translator = ct2_peer.translator(folder, "cpu", "float32", 1)
        scored = translator.score_batch(vocabulary.tokens(ids), vocabulary.tokens(labels))
        for row, result in enumerate(scored):  # score_batch also scores the end token: drop it
            assert torch.allclose(torch.tensor(result.log_probs[:6]), reference[row], atol=1e-4)
        stamps = []
        assert ct2_peer.decode(translator, vocabulary.tokens(ids), 1, 7, stamps) > 0
        assert len(stamps) == 7  # one callback per step of example 0
        assert ct2_peer.decode(translator, vocabulary.tokens(ids), 3, 7) > 0  # beams: lengths checked inside
