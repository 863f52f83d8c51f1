"""Training, checkpoints and resuming (srsum.training, srsum.checkpoints), offline with tiny random models."""

import json
import os
import random
import time
from pathlib import Path

import pytest
import torch
from conftest import CNN_SAMPLE, tiny_training_config

from srsum import checkpoints
from srsum.checkpoints import (atomic_dir, atomic_write_json, find_newest_model, is_complete, last_checkpoint,
                               list_checkpoints, prune_checkpoints)
from srsum.engine import load_model
from srsum.errors import SrsumError
from srsum.summarize import Reporter
from srsum.training import TrainingConfig, TrainingInterrupted, train

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------
# checkpoint helpers


def _fake_checkpoint(folder: Path, step: int | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "best"
    with atomic_dir(final) as temp:
        (temp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as temp:
            (temp / "a.txt").write_text("two")
            raise KeyboardInterrupt
    assert (final / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    with atomic_dir(final) as temp:
        (temp / "a.txt").write_text("three")
    assert (final / "a.txt").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_atomic_write_json_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SrsumError, match="cannot write"):
        atomic_write_json(blocker / "m.json", {})


def test_incomplete_and_temporary_checkpoints_are_ignored(tmp_path):
    run = tmp_path / "run"
    _fake_checkpoint(run / "checkpoint-2", 2)
    _fake_checkpoint(run / "checkpoint-10", 10)
    _fake_checkpoint(run / "checkpoint-12.tmp-abc123", 12)  # interrupted write
    (run / "checkpoint-14").mkdir()  # no trainer_state.json
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-10"]
    assert last_checkpoint(run).name == "checkpoint-10"
    assert not is_complete(run / "checkpoint-12.tmp-abc123")
    assert [p.name for p in prune_checkpoints(run, keep=1)] == ["checkpoint-2"]
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-10"]


def test_find_newest_model_prefers_best_of_the_newest_run(tmp_path):
    root = tmp_path / "models"
    assert find_newest_model(root) is None
    old = _fake_checkpoint(root / "old" / "checkpoint-5", 5)
    new = _fake_checkpoint(root / "new" / "checkpoint-3", 3)
    past = time.time() - 100
    os.utime(old / "trainer_state.json", (past, past))
    assert find_newest_model(root) == new
    best = _fake_checkpoint(root / "new" / "best", 3)
    assert find_newest_model(root) == best
    _fake_checkpoint(root / "new" / "best.tmp-xyz", 9)  # ignored
    assert find_newest_model(root) == best


# ---------------------------------------------------------------------------------------------
# end to end


def test_trained_t5_checkpoint_layout_and_state(trained_t5):
    run = trained_t5.run_dir
    assert trained_t5.global_step == trained_t5.total_steps == 8
    assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoint-4", "checkpoint-8"]
    last = run / "checkpoint-8"
    for name in ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng.json", "trainer_state.json"):
        assert (last / name).is_file(), name
    assert any(last.glob("tokenizer*"))
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["epoch"] == 2.0 and state["steps_per_epoch"] == 4
    assert state["args"]["learning_rate"] == 1e-3 and state["args"]["batch_size"] == 2
    assert state["args"]["max_source_length"] == 64 and state["args"]["schedule_length"] == 16
    assert state["srformer"]["srformer_attention"] == "srformer"
    assert state["srformer"]["srformer_seg_size"] == 16
    assert state["srformer"]["srformer_schedule_length"] == 16  # G defaults to the max target length
    assert {"loss", "rouge1", "rouge2", "rougeL", "rougeLsum"} <= set(state["metrics"])
    assert state["best"]["metric"] == "rougeLsum"
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0]
    model = load_model(str(run / "best"))
    assert model.config.model_type == "srformer_t5" and model.config.srformer_seg_size == 16
    assert json.loads((run / "best" / "trainer_state.json").read_text())["global_step"] == state["best"]["step"]


def _final_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_model(str(folder)).state_dict().items()}


def test_interrupted_run_resumes_to_the_same_step_count(tmp_path, tiny_t5_dir, monkeypatch):
    # uninterrupted reference
    reference = train(tiny_training_config(tiny_t5_dir, tmp_path / "straight", eval_samples=0, save_steps=2))
    assert reference.global_step == 8

    run = tmp_path / "interrupted"
    config = tiny_training_config(tiny_t5_dir, run, eval_samples=0, save_steps=2)
    with pytest.raises(TrainingInterrupted) as caught:
        train(config, stop_after_steps=3)
    assert caught.value.step == 3 and caught.value.checkpoint == run / "checkpoint-2"
    assert "--resume" in str(caught.value)
    assert [p.name for p in run.iterdir()] == ["checkpoint-2"]  # the last complete one, intact
    load_model(str(run / "checkpoint-2"))

    import srsum.engine.hf_models

    def no_recalibration(*args, **kwargs):
        raise AssertionError("a resumed run must not be calibrated again")

    monkeypatch.setattr(srsum.engine.hf_models, "calibrate", no_recalibration)
    resumed = train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(run)))
    assert resumed.resumed_from == run / "checkpoint-2"
    assert resumed.global_step == resumed.total_steps == 8
    state = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert [e["step"] for e in state["log_history"]] == list(range(0, 9))  # step 0: the memory at the start
    assert [e["step"] for e in state["log_history"] if "memory" in e] == [0, 4, 8]  # start, end of each epoch
    # the calibration of the first start is kept (the same as the uninterrupted run's)
    straight_state = json.loads((reference.checkpoint / "trainer_state.json").read_text())
    assert state["srformer"]["srformer_calibration"] == straight_state["srformer"]["srformer_calibration"]
    assert state["srformer"]["srformer_calibration"]["source"] == "batch"
    # same data order, optimizer and schedule state: the resumed weights equal the uninterrupted run's
    straight, continued = _final_weights(reference.checkpoint), _final_weights(run / "checkpoint-8")
    for name, tensor in straight.items():
        torch.testing.assert_close(continued[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_interrupt_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_t5_dir, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path):
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing checkpoint-4
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(TrainingInterrupted) as caught:
        train(tiny_training_config(tiny_t5_dir, run, eval_samples=0, save_steps=2))
    assert caught.value.checkpoint == run / "checkpoint-2"
    assert [p.name for p in run.iterdir()] == ["checkpoint-2"]  # no half-written checkpoint-4.tmp-*
    load_model(str(run / "checkpoint-2"))


def test_resume_with_another_variant_or_segment_size_is_an_error(trained_t5):
    run = str(trained_t5.run_dir)
    with pytest.raises(SrsumError, match=r"--seg-size 16, not 32"):
        train(TrainingConfig(model="", dataset="", resume=True, output_dir=run, seg_size=32))
    with pytest.raises(SrsumError, match=r"--attention srformer, not segmented"):
        train(TrainingConfig(model="", dataset="", resume=True, output_dir=run, attention="segmented"))


def test_resume_of_a_finished_run_does_nothing_more(trained_t5):
    result = train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(trained_t5.run_dir)))
    assert result.global_step == 8 and result.resumed_from.name == "checkpoint-8"


def test_new_run_into_a_folder_with_checkpoints_is_an_error(trained_t5, tiny_t5_dir):
    with pytest.raises(SrsumError, match="already holds checkpoints; pass --resume"):
        train(tiny_training_config(tiny_t5_dir, trained_t5.run_dir))


def test_resume_without_checkpoints_is_an_error(tmp_path):
    with pytest.raises(SrsumError, match="no complete checkpoint"):
        train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(tmp_path)))


def test_gradient_accumulation_and_bf16_count_optimizer_steps(tmp_path, tiny_bart_dir):
    # 6 examples, batch 1, accumulate 2 -> 3 optimizer steps per epoch
    result = train(tiny_training_config(tiny_bart_dir, tmp_path / "run", train_limit=6, batch_size=1, epochs=1,
                                        gradient_accumulation_steps=2, eval_samples=0, bf16=True, seg_size=8,
                                        attention="segmented"))
    assert result.global_step == result.total_steps == 3
    model = load_model(str(result.checkpoint))
    assert model.config.model_type == "srformer_bart" and model.config.srformer_attention == "segmented"
    assert next(model.parameters()).dtype == torch.float32  # mixed precision keeps fp32 weights
    # no recurrent term: no memory report, no calibration
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert result.metrics == {} and not any("memory" in entry for entry in state["log_history"])
    assert model.config.srformer_calibration is None


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "--batch-size must be a positive integer"),
    ("eval_samples", -1, "--eval-samples must be 0 or more"),
    ("best_metric", "bleu", "--best-metric: unknown metric"),
    ("attention", "sparse", "unknown variant"),
    ("learning_rate", 0.0, "--learning-rate must be positive"),
    ("memory_ratio", -1.0, "--memory-ratio must be a positive number, got -1.0"),
    ("memory_ratio", float("nan"), "--memory-ratio must be a positive number"),
    ("w_init", "foo", "--w-init must be one of calibrated, paper, got 'foo'"),
    ("clamp", "-1", "--clamp takes 'off' or a positive number, got -1"),
    ("clamp", "none", "--clamp takes 'off' or a positive number, got none"),
])
def test_bad_training_settings(field, value, message, tmp_path):
    config = TrainingConfig(model="m", dataset="d", output_dir=str(tmp_path), **{field: value})
    with pytest.raises(SrsumError, match=message):
        train(config)


def test_unwritable_output_dir_and_bad_model(tmp_path, tiny_t5_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SrsumError, match="cannot write to output directory"):
        train(tiny_training_config(tiny_t5_dir, blocker / "run"))
    not_a_model = tmp_path / "empty-folder"
    not_a_model.mkdir()
    with pytest.raises(SrsumError, match="neither an srsum checkpoint nor a T5/BART model"):
        train(tiny_training_config(not_a_model, tmp_path / "run2"))
    assert not (tmp_path / "run2").exists() or not any((tmp_path / "run2").iterdir())


def test_checkpoints_module_reads_its_own_rng_state(tmp_path):
    import numpy as np

    (tmp_path / checkpoints.RNG_FILE).write_text(json.dumps(checkpoints.rng_state()))
    first = (torch.rand(3), random.random(), np.random.rand())
    checkpoints.set_rng_state(checkpoints.read_rng_state(tmp_path))
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(again[0], first[0]) and again[1:] == first[1:]


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["SRSUM_PAYLOAD_MARK"]),))


def test_resume_never_unpickles_a_planted_payload(tmp_path, monkeypatch):
    """A pickle planted in every file resume reads runs nothing: rng.json is JSON, optimizer/scheduler are
    loaded weights-only (the payload is refused with a one-line error), and an old pickled rng.pt is ignored."""
    mark = tmp_path / "payload-ran"
    monkeypatch.setenv("SRSUM_PAYLOAD_MARK", str(mark))
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.save({"state": _Payload()}, folder / name)
    assert checkpoints.read_rng_state(folder) is None  # rng.pt is never opened
    for name in ("optimizer.pt", "scheduler.pt"):
        with pytest.raises(SrsumError, match="cannot read"):
            checkpoints.load_torch_file(folder / name)
    (folder / checkpoints.RNG_FILE).write_text('{"python": "not a state"}')
    with pytest.raises(SrsumError, match="random state"):
        checkpoints.set_rng_state(checkpoints.read_rng_state(folder))
    assert not mark.exists()


# ---------------------------------------------------------------------------------------------
# calibration and the memory report


class Recorder(Reporter):
    def __init__(self):
        self.lines, self.warnings = [], []

    def info(self, message):
        self.lines.append(message)

    def warn(self, message):
        self.warnings.append(message)


def test_new_run_is_calibrated_on_its_first_training_batches(trained_t5):
    run = trained_t5.run_dir
    state = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["args"]["w_init"] == "calibrated" and state["args"]["memory_ratio"] == 0.05  # the engine's defaults
    calibration = state["srformer"]["srformer_calibration"]
    assert calibration["source"] == "batch" and calibration["memory_ratio"] == 0.05
    assert calibration["examples"] == 4  # the first two training batches of 2
    for folder in ("checkpoint-8", "best"):
        saved = load_model(str(run / folder)).config.srformer_calibration
        assert saved["source"] == "batch" and len(saved["layers"]) == 2

    # the memory at the start, on the calibration batch: the configured ratio, per decoder layer
    start = state["log_history"][0]
    assert start["step"] == 0 and [row["layer"] for row in start["memory"]] == [0, 1]
    for row in start["memory"]:
        assert 0.025 <= row["ratio"] <= 0.1, row
        assert 0 < row["firing_rate"] <= 1, row
    # ... and at every evaluation, on the validation rows: in the log and in the saved metrics
    evaluations = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [4, 8]
    assert all(len(entry["memory"]) == 2 for entry in evaluations)
    assert state["metrics"]["memory"] == evaluations[-1]["memory"] == trained_t5.metrics["memory"]
    assert all(row["ratio"] > 0 and 0 <= row["firing_rate"] <= 1 for row in state["metrics"]["memory"])
    # T5 does not clamp its products: recorded as off, no saturation measured
    assert state["args"]["clamp"] == "off" and state["srformer"]["srformer_clamp"] is None
    assert all(row["clamp_saturation"] is None for row in state["metrics"]["memory"] + start["memory"])


def test_memory_lines_and_one_dead_layer_warning(tmp_path, tiny_t5_dir):
    reporter = Recorder()
    result = train(tiny_training_config(tiny_t5_dir, tmp_path / "run", memory_ratio=1e-5, eval_samples=0),
                   reporter)
    memory_lines = [line for line in reporter.lines if line.startswith("memory ")]
    assert [line.split(":")[0].split(" (")[0] for line in memory_lines] == [
        "memory at start", "memory after step 4", "memory after step 8"]
    assert "layer 0 ratio 1e-05 firing" in memory_lines[0] and " | layer 1 ratio 1e-05 firing" in memory_lines[0]
    # the memory passes nothing on: said once, naming the layers
    memory_warnings = [message for message in reporter.warnings if message.startswith("memory")]
    assert memory_warnings == ["memory at start: decoder layers 0, 1 pass nothing on (the recurrent term is below "
                               "0.001 of the local one, or no RAF entry fires)"]
    # without validation the memory is measured on the first training batches, and saved
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert state["args"]["memory_ratio"] == 1e-5
    assert state["metrics"]["step"] == 8 and len(state["metrics"]["memory"]) == 2
    assert [entry["step"] for entry in state["log_history"] if "memory" in entry] == [0, 4, 8]


def test_paper_init_is_not_calibrated(tmp_path, tiny_t5_dir):
    result = train(tiny_training_config(tiny_t5_dir, tmp_path / "run", w_init="paper", train_limit=2, epochs=1,
                                        eval_samples=0))
    model = load_model(str(result.checkpoint))
    assert model.config.srformer_w_init == "paper" and model.config.srformer_calibration is None
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert state["args"]["w_init"] == "paper"
    assert all(row["ratio"] > 1 for row in state["log_history"][0]["memory"])  # the paper's init: memory dominates


def test_resume_with_another_w_init_or_memory_ratio_is_an_error(trained_t5):
    run = str(trained_t5.run_dir)
    with pytest.raises(SrsumError, match=r"--w-init calibrated, not paper"):
        train(TrainingConfig(model="", dataset="", resume=True, output_dir=run, w_init="paper"))
    with pytest.raises(SrsumError, match=r"--memory-ratio 0.05, not 0.1"):
        train(TrainingConfig(model="", dataset="", resume=True, output_dir=run, memory_ratio=0.1))


def _saturated_bart(folder: Path) -> Path:
    """A tiny BART (real tokenizer) whose cross-attention keys and values are scaled up: P exceeds BART's ±2 clamp."""
    from conftest import TOKENIZER_DIRS, tiny_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIRS["bart"]))
    model = tiny_model("bart", vocab_size=len(tokenizer))
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.encoder_attn.k_proj.weight.mul_(30)
            layer.encoder_attn.v_proj.weight.mul_(30)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_saturating_clamp_is_shown_and_warned_once_and_clamp_off_turns_it_off(tmp_path):
    from typer.testing import CliRunner

    from srsum.cli import app

    model = _saturated_bart(tmp_path / "bart")
    reporter = Recorder()
    result = train(tiny_training_config(model, tmp_path / "run", eval_samples=0, seg_size=8, clamp=2), reporter)
    memory_lines = [line for line in reporter.lines if line.startswith("memory ")]
    assert len(memory_lines) == 3 and all(line.count(" clamp-saturated ") == 2 for line in memory_lines), memory_lines
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert state["args"]["clamp"] == 2.0  # the paper's clamp, asked for and recorded
    start = state["log_history"][0]["memory"]
    assert all(row["clamp_saturation"] > 0.9 for row in start)
    assert f"layer 0 ratio {start[0]['ratio']:.3g} firing {start[0]['firing_rate']:.2f} clamp-saturated " \
           f"{start[0]['clamp_saturation']:.2f}" in memory_lines[0]
    clamp_warnings = [message for message in reporter.warnings if "clamp" in message]
    shares = [f"{row['clamp_saturation']:.0%}" for row in start]
    assert clamp_warnings == [f"memory at start: the products' clamp (±2) saturates {shares[0]} of P in decoder "
                              f"layer 0 ({shares[1]} in layer 1): the memory carries little; train with --clamp off"]

    # --clamp off on the command line (also the default): converted without a clamp, saved so, nothing saturates
    run = tmp_path / "run-off"
    done = CliRunner().invoke(app, ["train", "--model", str(model), "--dataset", str(CNN_SAMPLE), "--train-split",
                                    "test", "--train-limit", "4", "--eval-samples", "0", "--batch-size", "2",
                                    "--epochs", "1", "--max-source-length", "64", "--max-target-length", "16",
                                    "--seg-size", "8", "--clamp", "off", "--output-dir", str(run)])
    assert done.exit_code == 0, done.output
    assert "clamp-saturated" not in done.output and "--clamp off" not in done.output
    saved = load_model(str(run / "checkpoint-2"))
    assert saved.config.srformer_clamp is None
    assert all(layer.settings.clamp is None for layer in saved.modules() if hasattr(layer, "recurrent_w"))
    assert json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())["args"]["clamp"] == "off"
    # a resumed run keeps its clamp
    assert train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(run), clamp="OFF")).global_step == 2
    with pytest.raises(SrsumError, match=r"converted with --clamp off, not 2.0; drop --clamp"):
        train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(run), clamp=2))


def test_cli_bad_clamp_is_one_line(tmp_path, tiny_bart_dir):
    from typer.testing import CliRunner

    from srsum.cli import app

    for value in ("-1", "loose"):
        result = CliRunner().invoke(app, ["train", "--model", str(tiny_bart_dir), "--dataset", str(CNN_SAMPLE),
                                          "--clamp", value, "--output-dir", str(tmp_path / "run")])
        assert result.exit_code == 2, result.output  # a command-line mistake
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert errors == [f"Error: --clamp takes 'off' or a positive number, got {value}"], result.output
        assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_memory_rows_and_line_show_the_clamp_saturation():
    from srsum.training.evaluation import clamp_warning, memory_line, memory_rows

    rows = memory_rows([{"layer": 0, "ratio": 0.05, "firing_rate": 0.123456, "clamp_saturation": 0.987654},
                        {"layer": 1, "ratio": 0.05, "firing_rate": 0.1, "clamp_saturation": 0.3},
                        {"layer": 2, "ratio": 0.05, "firing_rate": None, "clamp_saturation": None}])
    assert [row["clamp_saturation"] for row in rows] == [0.9877, 0.3, None]
    assert memory_line("at start", rows) == ("memory at start: layer 0 ratio 0.05 firing 0.12 clamp-saturated 0.99 | "
                                             "layer 1 ratio 0.05 firing 0.10 clamp-saturated 0.30 | layer 2 ratio 0.05")
    assert clamp_warning("after step 4", rows, 2.0) == (
        "memory after step 4: the products' clamp (±2) saturates 99% of P in decoder layer 0: the memory carries "
        "little; train with --clamp off")
    assert clamp_warning("at start", rows[1:], 2.0) is None
    # rows saved by an older srsum have no clamp_saturation
    old = memory_rows([{"layer": 0, "ratio": 0.05, "firing_rate": 0.1}])
    assert old == [{"layer": 0, "ratio": 0.05, "firing_rate": 0.1, "clamp_saturation": None}]
    assert memory_line("x", [{"layer": 0, "ratio": 0.05, "firing_rate": 0.1}]) == "memory x: layer 0 ratio 0.05 " \
                                                                                   "firing 0.10"
    assert clamp_warning("x", [{"layer": 0, "ratio": 0.05, "firing_rate": 0.1}], None) is None


# ---------------------------------------------------------------------------------------------
# issue 14: exact resume with dropout, loss lines without a terminal, contradicting flags on --resume


def _tiny_t5_with_dropout(folder: Path) -> Path:
    from conftest import TOKENIZER_DIRS, tiny_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIRS["t5"]))
    tiny_model("t5", vocab_size=len(tokenizer), dropout_rate=0.1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_resume_is_exact_with_dropout(tmp_path):
    # dropout 0.1: the resumed run must draw the same dropout masks as the uninterrupted one, so nothing may
    # draw from the global RNG between the checkpoint and the next step (a DataLoader iterator did)
    model = _tiny_t5_with_dropout(tmp_path / "dropout-t5")
    straight = train(tiny_training_config(model, tmp_path / "straight", eval_samples=0, save_steps=3, epochs=1,
                                          max_target_length=48))
    run = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted):
        train(tiny_training_config(model, run, eval_samples=0, save_steps=3, epochs=1, max_target_length=48),
              stop_after_steps=3)
    assert last_checkpoint(run).name == "checkpoint-3"
    resumed = train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(run)))
    assert resumed.global_step == straight.global_step == 4
    losses = [[e["loss"] for e in json.loads((folder / "trainer_state.json").read_text())["log_history"] if "loss" in e]
              for folder in (straight.checkpoint, resumed.checkpoint)]
    assert losses[1] == losses[0]
    straight_weights, continued = _final_weights(straight.checkpoint), _final_weights(resumed.checkpoint)
    for name, tensor in straight_weights.items():
        torch.testing.assert_close(continued[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    # ... and the dropout matters: the same run without the saved random state ends elsewhere
    (run / "checkpoint-3" / "rng.json").unlink()
    import shutil

    shutil.rmtree(run / "checkpoint-4")
    with pytest.warns(UserWarning, match="no random state"):
        afresh = train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(run)))
    assert not torch.equal(_final_weights(afresh.checkpoint)["lm_head.weight"], straight_weights["lm_head.weight"])


def test_loss_lines_every_logging_steps_when_asked(tmp_path, tiny_t5_dir):
    reporter = Recorder()
    train(tiny_training_config(tiny_t5_dir, tmp_path / "run", eval_samples=0, logging_steps=3), reporter,
          log_lines=True)
    lines = _loss_lines(reporter.lines)
    assert [line.split(":")[0] for line in lines] == ["step 3/8", "step 6/8", "step 8/8"]
    assert all(", learning rate " in line and float(line.split("loss ")[1].split(",")[0]) > 0 for line in lines)
    assert all(float(line.split(", ")[2].split()[0].replace(",", "")) > 0 and "target tokens/s" in line
               for line in lines)
    assert "memory ratio" not in lines[0] and "memory ratio" in lines[-1]  # measured after the first epoch
    quiet = Recorder()
    train(tiny_training_config(tiny_t5_dir, tmp_path / "run2", eval_samples=0, logging_steps=3), quiet)
    assert not _loss_lines(quiet.lines)  # on a terminal the progress bar shows it


def _loss_lines(lines):
    """The plain loss lines, without their leading UTC timestamp (checked to be one)."""
    import re
    from datetime import datetime

    found = []
    for line in lines:
        stamp, _, rest = line.partition(" ")
        if re.match(r"step \d+/\d+: ", rest):
            assert datetime.fromisoformat(stamp).tzinfo is not None, line
            found.append(rest)
    return found


def test_cli_prints_loss_lines_when_stderr_is_not_a_terminal(tmp_path, tiny_t5_dir):
    import subprocess
    import sys

    config = tiny_training_config(tiny_t5_dir, tmp_path / "run", eval_samples=0, epochs=1)
    command = [sys.executable, "-m", "srsum.cli", "train", "--model", config.model, "--dataset", config.dataset,
               "--train-split", "test", "--validation-split", "test", "--train-limit", "8", "--eval-samples", "0",
               "--batch-size", "2", "--epochs", "1", "--max-source-length", "64", "--max-target-length", "16",
               "--seg-size", "16", "--logging-steps", "2", "--output-dir", config.output_dir]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = _loss_lines(done.stderr.splitlines())
    assert [line.split(":")[0] for line in lines] == ["step 2/4", "step 4/4"], done.stderr[-3000:]


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 5, r"--epochs 2, not 5; drop --epochs"),
    ("learning_rate", 0.1, r"--learning-rate 0.001, not 0.1"),
    ("batch_size", 4, r"--batch-size 2, not 4"),
    ("bf16", True, r"--bf16 off, not on"),
    ("max_target_length", 32, r"--max-target-length 16, not 32"),
])
def test_resume_with_a_contradicting_setting_is_an_error(trained_t5, field, value, message):
    with pytest.raises(SrsumError, match=message):
        train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(trained_t5.run_dir),
                             **{field: value}))
    # the same value as the checkpoint's, or the hardware, may be given
    same = json.loads((trained_t5.checkpoint / "trainer_state.json").read_text())["args"][field]
    result = train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(trained_t5.run_dir),
                                  cpu=True, **{field: same}))
    assert result.global_step == 8


# ---------------------------------------------------------------------------------------------
# issue 14: crash safety and permissions of checkpoint writes


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder.parent)): p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}


def test_written_folders_and_files_follow_the_umask(tmp_path, umask):
    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)):
        umask(mask)
        final = tmp_path / f"best-{mask:o}"
        with atomic_dir(final) as temp:
            (temp / "a.txt").write_text("one")
            os.close(os.open(temp / "secret.bin", os.O_CREAT | os.O_WRONLY, 0o600))  # as a library may write
            (temp / "sub").mkdir(mode=0o700)
            (temp / "sub" / "b.txt").write_text("two")
        modes = _modes(final)
        assert {name: mode for name, mode in modes.items() if (tmp_path / name).is_dir()} == {
            final.name: dir_mode, f"{final.name}/sub": dir_mode}
        assert {mode for name, mode in modes.items() if (tmp_path / name).is_file()} == {file_mode}
        written = atomic_write_json(tmp_path / f"metrics-{mask:o}.json", {"a": 1})
        assert written.stat().st_mode & 0o777 == file_mode


def test_new_folder_is_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(f"rename {Path(b).name}"), real_rename(a, b))[1])
    with atomic_dir(tmp_path / "checkpoint-1") as temp:
        for name in ("config.json", "model.safetensors", "trainer_state.json"):
            (temp / name).write_text(name)
    rename = events.index("rename checkpoint-1")
    assert events[:rename].count("fsync") >= 4  # three files and the folder, before it gets its final name
    assert "fsync" in events[rename:]  # and the run folder's entry afterwards


def test_crash_between_the_two_renames_of_best_is_repaired(tmp_path, monkeypatch):
    run = tmp_path / "run"
    best = _fake_checkpoint(run / "best", 2)
    _fake_checkpoint(run / "checkpoint-2", 2)
    monkeypatch.setattr(checkpoints, "_exchange", lambda a, b: False)  # a system without an atomic exchange
    real_rename = os.rename

    def rename(source, target):
        if Path(target).name == "best":
            raise KeyboardInterrupt  # killed after best/ was moved aside, before the new one took its place
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(best) as temp:
            _fake_checkpoint(temp / "x", 4)
    monkeypatch.setattr(os, "rename", real_rename)
    names = sorted(p.name for p in run.iterdir())
    assert "best" not in names and any(name.startswith("best.tmp-old-") for name in names)
    # leftovers of an interrupted checkpoint write and of an atomic file write
    (run / "checkpoint-4.tmp-abc123").mkdir()
    (run / ".metrics.json.tmp-xyz").write_text("half")
    removed = checkpoints.recover_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoint-2"]
    assert json.loads((run / "best" / "trainer_state.json").read_text())["global_step"] == 2  # the old best is back
    assert sorted(p.name for p in removed) == [".metrics.json.tmp-xyz", "checkpoint-4.tmp-abc123"]


def test_atomic_exchange_replaces_best_in_one_step(tmp_path, monkeypatch):
    best = _fake_checkpoint(tmp_path / "best", 2)
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renames.append(b), real_rename(a, b))[1])
    with atomic_dir(best) as temp:
        (temp / "config.json").write_text("{}")
        (temp / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert json.loads((best / "trainer_state.json").read_text())["global_step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    if checkpoints.sys.platform.startswith("linux"):
        assert renames == []  # swapped by renameat2(RENAME_EXCHANGE): never a moment without best/


def test_training_removes_leftovers_of_a_killed_run(tmp_path, tiny_t5_dir):
    run = tmp_path / "run"
    train(tiny_training_config(tiny_t5_dir, run, eval_samples=0, epochs=1, train_limit=4))
    (run / "checkpoint-9.tmp-killed").mkdir()  # what a kill -9 in the middle of a save leaves
    (run / "checkpoint-9.tmp-killed" / "model.safetensors").write_text("half")
    resumed = train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(run)))
    assert resumed.global_step == 2 and sorted(p.name for p in run.iterdir()) == ["checkpoint-2"]


# ---------------------------------------------------------------------------------------------
# issue 14: a new model from a config.json and a local tokenizer (--config / --tokenizer), offline


def _t5_config_file(folder: Path, vocab_size: int) -> Path:
    from conftest import tiny_t5_config

    tiny_t5_config(vocab_size=vocab_size).save_pretrained(folder)  # config.json only: no weights, no tokenizer
    return folder / "config.json"


def test_new_model_from_a_config_and_a_local_tokenizer(tmp_path):
    from conftest import TOKENIZER_DIRS
    from transformers import AutoTokenizer

    tokenizer_dir = TOKENIZER_DIRS["t5"]
    config_file = _t5_config_file(tmp_path / "t5-config", len(AutoTokenizer.from_pretrained(str(tokenizer_dir))))
    settings = dict(model="", model_config=str(config_file), tokenizer=str(tokenizer_dir), eval_samples=0,
                    epochs=1, train_limit=4)
    reporter = Recorder()
    first = train(tiny_training_config("", tmp_path / "first", **settings), reporter)
    assert any(line.startswith(f"training a new t5 from {config_file} with srformer") for line in reporter.lines)
    model = load_model(str(first.checkpoint))
    assert model.config.model_type == "srformer_t5" and model.config.d_model == 32
    assert model.config.srformer_calibration["source"] == "batch"  # converted and calibrated like a plain model
    assert any(first.checkpoint.glob("tokenizer*"))
    state = json.loads((first.checkpoint / "trainer_state.json").read_text())
    assert state["args"]["model_config"] == str(config_file) and state["args"]["tokenizer"] == str(tokenizer_dir)
    # the start model comes from --seed: the same seed, the same run
    second = train(tiny_training_config("", tmp_path / "second", **settings))
    torch.testing.assert_close(_final_weights(second.checkpoint)["lm_head.weight"],
                               _final_weights(first.checkpoint)["lm_head.weight"])
    # a folder holding config.json works too; --resume continues from the checkpoint
    assert train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(first.run_dir))).global_step == 2


def test_config_errors_are_one_line(tmp_path, tiny_t5_dir):
    from conftest import TOKENIZER_DIRS

    tokenizer = str(TOKENIZER_DIRS["t5"])
    small = _t5_config_file(tmp_path / "small", vocab_size=100)
    cases = [
        (dict(model=str(tiny_t5_dir), model_config=str(small)), "--model and --config exclude each other"),
        (dict(model="", model_config=str(tmp_path / "nothing")), "neither a config.json file nor a folder"),
        (dict(model="", model_config=str(small)), "--config needs --tokenizer"),  # its folder has no tokenizer
        (dict(model="", model_config=str(small), tokenizer=tokenizer), r"--tokenizer has \d+ tokens but the "
                                                                         "config's vocab_size is 100"),
    ]
    for overrides, message in cases:
        with pytest.raises(SrsumError, match=message):
            train(tiny_training_config("", tmp_path / "run", eval_samples=0, **overrides))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_cli_trains_from_config_and_tokenizer(tmp_path):
    from conftest import CNN_SAMPLE, TOKENIZER_DIRS
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from srsum.cli import app

    tokenizer = TOKENIZER_DIRS["t5"]
    config_dir = _t5_config_file(tmp_path / "cfg", len(AutoTokenizer.from_pretrained(str(tokenizer)))).parent
    result = CliRunner().invoke(app, ["train", "--config", str(config_dir), "--tokenizer", str(tokenizer),
                                      "--dataset", str(CNN_SAMPLE), "--train-split", "test", "--train-limit", "2",
                                      "--eval-samples", "0", "--batch-size", "2", "--epochs", "1",
                                      "--max-source-length", "64", "--max-target-length", "16", "--seg-size", "16",
                                      "--output-dir", str(tmp_path / "run"), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["global_step"] == 1


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, tiny_t5_dir):
    # the loss of a step is the mean over all its label tokens, so 2 x 2 accumulated = one batch of 4 (the
    # summaries have different lengths: a mean of per-batch means would differ)
    settings = dict(eval_samples=0, epochs=1, max_target_length=48)
    accumulated = train(tiny_training_config(tiny_t5_dir, tmp_path / "acc", batch_size=2,
                                             gradient_accumulation_steps=2, **settings))
    large = train(tiny_training_config(tiny_t5_dir, tmp_path / "large", batch_size=4, **settings))
    assert accumulated.global_step == large.global_step == 2
    states = [json.loads((r.checkpoint / "trainer_state.json").read_text()) for r in (accumulated, large)]
    assert states[0]["global_batch_size"] == states[1]["global_batch_size"] == 4
    # calibrated on the same first two global batches (8 examples)
    calibrations = [state["srformer"]["srformer_calibration"] for state in states]
    assert calibrations[0] == calibrations[1] and calibrations[0]["examples"] == 8
    assert [e["loss"] for e in states[0]["log_history"] if "loss" in e] == pytest.approx(
        [e["loss"] for e in states[1]["log_history"] if "loss" in e], rel=1e-5)
    first, second = _final_weights(accumulated.checkpoint), _final_weights(large.checkpoint)
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_cli_resume_with_a_contradicting_flag_is_one_line(trained_t5):
    from typer.testing import CliRunner

    from srsum.cli import app

    result = CliRunner().invoke(app, ["train", "--resume", "--output-dir", str(trained_t5.run_dir), "--epochs", "5"])
    assert result.exit_code == 2  # a command-line mistake
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "was trained with --epochs 2, not 5; drop --epochs" in errors[0], result.output


def test_resume_of_a_multi_process_checkpoint_of_an_older_srsum_is_refused(tmp_path, trained_t5):
    import shutil

    run = tmp_path / "old-run"
    shutil.copytree(trained_t5.run_dir, run)
    state_file = run / "checkpoint-8" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["num_processes"] = 4  # what an older srsum wrote under 4 GPUs (no global_batch_size yet)
    del state["global_batch_size"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(SrsumError, match="written by an older srsum under 4 processes"):
        train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(run)))


def test_transfer_steps_teach_the_new_memory_before_fine_tuning_and_are_recorded(tmp_path, tiny_t5_dir):
    reporter = Recorder()
    result = train(tiny_training_config(tiny_t5_dir, tmp_path / "run", eval_samples=0, seg_size=8, epochs=1,
                                        transfer_steps=3), reporter)
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert state["args"]["transfer_steps"] == 3
    moved = [entry["transfer"] for entry in state["log_history"] if "transfer" in entry]
    assert len(moved) == 1 and moved[0]["steps"] == 3 and moved[0]["decoder_inputs"] == "labels"
    lines = [line for line in reporter.lines if line.startswith("attention transfer: layer")]
    assert lines == [f"attention transfer: layer {i} relative error {b:.3f} -> {a:.3f}"
                     for i, (b, a) in enumerate(zip(moved[0]["layer_error_before"], moved[0]["layer_error_after"]))]
    # a variant without a memory to transfer to is refused before training
    with pytest.raises(SrsumError, match="no memory to transfer to"):
        train(tiny_training_config(tiny_t5_dir, tmp_path / "seg", attention="segmented", transfer_steps=2))
