"""benchmarks/decode.py (issue 13): its CTranslate2 peer (skipped rows without the package, and with it a
converted random model that scores like the PyTorch one), and its rounds (``--repeats``: round-robin over the
grid, each cell's best figures) with the flat-in-n table."""

import importlib.util
import subprocess
import sys
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


def _cell(n, system="srformer", **extra):
    return {**dict(model="t5-small", n=n, batch=8, beams=1, system=system, step="eager", new_tokens=4, seg_size=8,
                   device="cpu", dtype="float32", threads=1), **extra}


def test_rounds_go_round_robin_and_each_cell_keeps_its_best_figures(monkeypatch):
    calls, steps = [], iter([40.0, 60.0, 30.0, 66.0, 35.0, 63.0])  # n 1k, n 16k, n 1k, ...

    def fake_measure(cell, device, in_process=False):
        calls.append((cell["n"], cell["system"]))
        if cell["system"] == "ctranslate2":
            return dict(cell, decode_s=1.0, ms_per_step=20.0)
        if cell["n"] == 4:
            return dict(cell, error="out of memory")
        step = next(steps)
        return dict(cell, decode_s=step / 10, ms_per_step=step, after_first_ms_per_token=step + 1,
                    decode_ms_per_token=step + 2, total_ms_per_token=step + 2, peak_mb=step)

    monkeypatch.setattr(decode_bench, "measure", fake_measure)
    grid = [_cell(1024), _cell(16384), _cell(2, skipped="needs ~99 GB"), _cell(4), _cell(1024, "ctranslate2")]
    cells = decode_bench.measure_grid(grid, "cpu", repeats=3)
    # every round times each cell once, in grid order; CTranslate2 (repeats inside) and a failed cell once
    assert calls == [(1024, "srformer"), (16384, "srformer"), (4, "srformer"), (1024, "ctranslate2"),
                     (1024, "srformer"), (16384, "srformer"), (1024, "srformer"), (16384, "srformer")]
    short, long_, skipped, failed, ct2 = cells
    assert (short["ms_per_step"], long_["ms_per_step"]) == (30.0, 60.0)  # each cell's fastest round
    assert short["repeats_ms_per_step"] == [40.0, 30.0, 35.0]
    assert short["after_first_ms_per_token"] == 31.0 and short["decode_ms_per_token"] == 32.0
    assert short["peak_mb"] == 40.0  # memory: the largest round
    assert skipped["skipped"] == "needs ~99 GB" and failed["error"] == "out of memory"
    assert ct2["ms_per_step"] == 20.0 and "repeats_ms_per_step" not in ct2


def test_flat_in_n_table_gives_each_setting_its_change_against_the_smallest_n():
    cells = [dict(_cell(1024), ms_per_step=30.0, repeats_ms_per_step=[30.0, 34.0]),
             dict(_cell(16384), ms_per_step=33.3, repeats_ms_per_step=[36.0, 33.3]),
             dict(_cell(1024, seg_size=64), ms_per_step=40.0),
             dict(_cell(16384, seg_size=64), ms_per_step=30.0),
             dict(_cell(1024, "peer"), ms_per_step=50.0), dict(_cell(16384, "peer"), ms_per_step=300.0)]
    table = decode_bench.flat_in_n(cells)
    assert "| t5-small | 8 | 1 | srformer s=8 | eager | 30.0 (30.0-34.0) | 33.3 +11.0% (33.3-36.0) |" in table
    assert "| t5-small | 8 | 1 | srformer s=64 | eager | 40.0 | 30.0 -25.0% |" in table
    assert "peer" not in table.split("|---")[-1]  # the peer reads n-long keys: not a flat-in-n setting
    assert decode_bench.flat_in_n(cells[:1]) == ""  # one n: no table


def test_repeats_run_the_real_grid_in_rounds_and_print_the_flat_in_n_tables():
    command = [sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--models", "t5-small", "--n", "64,256",
               "--batch", "1", "--beams", "1", "--systems", "srformer", "--seg-size", "8", "--step", "eager",
               "--new-tokens", "4", "--threads", "1", "--no-encoder", "--in-process", "--repeats", "2", "--lockstep"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [line.split("]")[0].strip() for line in out.stdout.splitlines() if line.startswith("  [")] == [
        "[1/2", "[1/2", "[2/2", "[2/2"]
    flat = out.stdout.split("Flat in n")[1]
    assert "| t5-small | 1 | 1 | srformer s=8 | eager |" in flat
    # in lockstep: both n decoded together in turns, once per round
    assert [line.split(":")[0].strip() for line in out.stdout.splitlines() if "lockstep [" in line] == [
        "lockstep [1/2] srformer s=8 eager batch 1 beams 1", "lockstep [2/2] srformer s=8 eager batch 1 beams 1"]
    assert "| t5-small | 1 | 1 | srformer s=8 | eager | 64 -> 256 |" in out.stdout.split("in lockstep")[1]


def test_turnstile_lets_one_decoding_run_at_a_time_in_turns_and_times_each_step():
    turnstile, log = decode_bench.Turnstile(3), []

    def worker(index, steps):
        turnstile.local.index = index
        turnstile.wait(index)
        for step in range(steps):
            log.append((index, step))
            turnstile.pass_on(index)  # what the logits hook does at each step
            turnstile.wait(index)
        turnstile.pass_on(index, leaving=True)

    threads = [decode_bench.threading.Thread(target=worker, args=(i, steps)) for i, steps in enumerate([3, 1, 3])]
    for thread in reversed(threads):  # started in any order: turn 0 goes first
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert log == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2), (2, 2)]  # 1 left after its step: 0 and 2 go on
    assert [len(steps) for steps in turnstile.steps] == [3, 1, 3]
    assert turnstile.active == [] and turnstile.turn is None


def test_the_generate_system_times_model_generate_against_srsums_generate():
    """``generate`` (issue 30): model.generate on the srformer model, step auto only, compared with srformer."""
    assert decode_bench.runs(["srformer", "generate"], ["eager", "compiled"], "cpu", [8, 64]) == [
        ("srformer", "eager", 8), ("srformer", "eager", 64), ("srformer", "compiled", 8),
        ("srformer", "compiled", 64), ("generate", "eager", 8), ("generate", "eager", 64)]
    cells = [decode_bench.run_cell(_cell(64, system, batch=1, beams=2), {}) for system in ("srformer", "generate")]
    for cell in cells:
        assert cell["decode_ms_per_token"] > 0 and cell["ms_per_step"] > 0
    table = decode_bench.report({"cells": cells, "encoder": []})
    assert "model.generate against srsum's generate" in table
    assert "| t5-small | 64 | 1 | 2 | 8 | eager |" in table.split("model.generate against")[1]
