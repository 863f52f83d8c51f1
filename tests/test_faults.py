"""Faults a long training run or a batch job meets (issue 28), tried through the command line: a diverging run,
failing writes, two writers on one folder, changed training data, an empty reference, planted symbolic links."""

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CNN_SAMPLE
from safetensors.torch import load_file
from test_cli import assert_one_line_error, run

from srsum import checkpoints
from srsum.checkpoints import last_checkpoint, save_checkpoint
from srsum.errors import RuntimeFailure
from srsum.locks import LOCK_FILE
from srsum.training.fingerprint import describe_change

pytestmark = pytest.mark.usefixtures("single_thread")


def _train_args(model_dir, run_dir, *extra):
    return ["train", "--model", model_dir, "--dataset", CNN_SAMPLE, "--train-split", "test", "--validation-split",
            "test", "--train-limit", "8", "--batch-size", "2", "--max-source-length", "64", "--max-target-length",
            "16", "--seg-size", "16", "--learning-rate", "1e-3", "--output-dir", run_dir, "--quiet", *extra]


def _all_finite(folder: Path) -> bool:
    return all(torch.isfinite(tensor).all() for tensor in load_file(folder / "model.safetensors").values())


def _step_of(folder: Path) -> int:
    return json.loads((folder / "trainer_state.json").read_text())["global_step"]


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------------------------------------
# 1. a non-finite loss or gradients


class _NanGradient(torch.autograd.Function):
    """The identity forward, NaN gradients backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _poison_step(monkeypatch, at_step: int, kind: str) -> None:
    """Make the loss (or only its gradients) of optimizer step ``at_step`` and later ones not finite."""
    import srsum.training.loop as loop

    real, calls = loop.loss_sum, []

    def poisoned(model, batch):
        calls.append(1)
        loss = real(model, batch)
        if len(calls) < at_step:
            return loss
        return loss * float("nan") if kind == "loss" else _NanGradient.apply(loss)

    monkeypatch.setattr(loop, "loss_sum", poisoned)


# bf16 without validation: validation under bf16 autocast on the CPU fails in the decode step's packed linear
# (oneDNN), already at ab65034, before issue 28
@pytest.mark.parametrize("kind, extra", [("loss", ["--eval-samples", "2"]), ("gradients", ["--eval-samples", "2"]),
                                         ("loss", ["--eval-samples", "0", "--bf16"])])
def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoints(tiny_t5_dir, tmp_path, monkeypatch,
                                                                              kind, extra):
    _poison_step(monkeypatch, 5, kind)  # 4 steps an epoch: best/ and checkpoint-4 are written before step 5
    run_dir = tmp_path / "run"
    result = run(*_train_args(tiny_t5_dir, run_dir, "--epochs", "2", "--save-steps", "2", *extra))
    what = "the loss is nan" if kind == "loss" else "the gradient norm is nan"
    assert_one_line_error(result, f"step 5: {what}", "training stopped", str(run_dir / "checkpoint-4"),
                          "--learning-rate", "--skip-nonfinite N", code=1)
    validated = "--bf16" not in extra
    assert sorted(p.name for p in run_dir.iterdir()) == ["best"] * validated + ["checkpoint-2", "checkpoint-4"]
    assert last_checkpoint(run_dir) == run_dir / "checkpoint-4"
    assert all(_all_finite(folder) for folder in run_dir.iterdir())
    if validated:
        assert _step_of(run_dir / "best") == 4


def test_skip_nonfinite_skips_that_many_batches_with_a_warning_each(tiny_t5_dir, tmp_path, monkeypatch):
    _poison_step(monkeypatch, 3, "loss")
    run_dir = tmp_path / "run"
    result = run(*_train_args(tiny_t5_dir, run_dir, "--max-steps", "6", "--save-steps", "2", "--eval-samples", "0",
                              "--skip-nonfinite", "2"))
    warnings = [line for line in result.stderr.splitlines() if "batch is skipped" in line]
    assert [line.split(":")[1].strip() for line in warnings] == ["step 3", "step 4"], result.stderr
    assert all(line.startswith("Warning:") for line in warnings)
    assert_one_line_error(result, "step 5: the loss is nan", "all 2 skips used", str(run_dir / "checkpoint-4"),
                          code=1)
    state = json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["skipped_nonfinite_steps"] == [3, 4] and _all_finite(run_dir / "checkpoint-4")
    weights = [load_file(run_dir / name / "model.safetensors") for name in ("checkpoint-2", "checkpoint-4")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])  # skipped: no update


def test_a_diverging_learning_rate_never_saves_poison(tiny_t5_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run(*_train_args(tiny_t5_dir, run_dir, "--learning-rate", "1e12", "--max-steps", "6", "--save-steps",
                              "2", "--eval-samples", "2"))
    line = assert_one_line_error(result, "the loss is nan", "training stopped", "--learning-rate (now 1e+12)",
                                 code=1)
    step = int(line.split("step ")[1].split(":")[0])
    assert step < 6
    for folder in [p for p in run_dir.iterdir() if p.is_dir()] if run_dir.exists() else []:
        assert _all_finite(folder) and _step_of(folder) < step


# ---------------------------------------------------------------------------------------------
# 2. write errors


def _fail_writing(monkeypatch, error: BaseException, when: str = "checkpoint-4") -> None:
    """Make safetensors' save raise ``error`` while it writes a folder whose name starts with ``when``."""
    import transformers.modeling_utils

    real = transformers.modeling_utils.safe_save_file

    def failing(tensors, filename, *args, **kwargs):
        if Path(filename).parent.name.startswith(when):
            raise error
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", failing)


@pytest.mark.parametrize("make_error", [
    lambda: __import__("safetensors").SafetensorError("Error while serializing: I/O error: No space left on device"),
    lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))], ids=["SafetensorError", "ENOSPC"])
def test_a_failing_checkpoint_write_is_one_line_and_keeps_the_previous_checkpoint(tiny_t5_dir, tmp_path,
                                                                                  monkeypatch, make_error):
    _fail_writing(monkeypatch, make_error())
    run_dir = tmp_path / "run"
    result = run(*_train_args(tiny_t5_dir, run_dir, "--max-steps", "6", "--save-steps", "2", "--eval-samples", "0"))
    assert_one_line_error(result, f"cannot write {run_dir / 'checkpoint-4'}", "No space left on device", code=1)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-2"]  # no partial folder, no lock file
    assert _step_of(run_dir / "checkpoint-2") == 2 and _all_finite(run_dir / "checkpoint-2")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES])
@pytest.mark.parametrize("part", ["weights", "optimizer", "trainer_state"])
def test_every_write_error_of_a_checkpoint_is_a_runtime_failure_naming_it(tmp_path, monkeypatch, code, part):
    from conftest import tiny_model

    model = tiny_model("t5")
    optimizer = torch.optim.AdamW(model.parameters())
    folder = tmp_path / "checkpoint-1"
    save_checkpoint(folder, model, None, {"global_step": 1}, optimizer)
    error = OSError(code, os.strerror(code))
    real_write = checkpoints.write_new_file

    def failing_torch_save(obj, path):
        raise error

    def failing_state(path, text):
        if Path(path).name == "trainer_state.json":
            raise error
        real_write(path, text)

    if part == "weights":
        _fail_writing(monkeypatch, error, "checkpoint-1.tmp")
    elif part == "optimizer":
        monkeypatch.setattr(checkpoints, "_torch_save", failing_torch_save)
    else:
        monkeypatch.setattr(checkpoints, "write_new_file", failing_state)
    with pytest.raises(RuntimeFailure, match=f"cannot write {folder}: {os.strerror(code)}"):
        save_checkpoint(folder, model, None, {"global_step": 2}, optimizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    assert _step_of(folder) == 1


def _fail_fsync(monkeypatch, code=errno.ENOSPC):
    def fsync(handle):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)


def test_summarize_output_and_evaluate_files_on_a_full_disk(best, tmp_path, monkeypatch):
    article = tmp_path / "a.txt"
    article.write_text("The council approved the new park on Monday. Work starts in May.")
    output = tmp_path / "out.jsonl"
    output.write_text('{"id": "old", "summary": "before"}\n')
    _fail_fsync(monkeypatch)
    result = run("summarize", article, "--model", best, "--max-length", "4", "--num-beams", "1", "--output", output)
    assert_one_line_error(result, f"cannot write {output}", "No space left on device", code=1)
    assert output.read_text() == '{"id": "old", "summary": "before"}\n'  # the previous output intact
    journal = tmp_path / "out.jsonl.partial"
    assert [json.loads(line)["id"] for line in journal.read_text().splitlines()] == ["a"]  # the work is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "out.jsonl", "out.jsonl.partial"]

    evaluation = tmp_path / "eval"
    result = run("evaluate", "--baseline", "lead-3", "--dataset", CNN_SAMPLE, "--limit", "3", "--output-dir",
                 evaluation)
    assert_one_line_error(result, f"cannot write {evaluation / 'predictions.jsonl'}", "No space left on device",
                          code=1)
    assert list(evaluation.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 3. one writer per output folder


def _hold(path: Path, pid: int):
    """Hold an exclusive flock on ``path`` with ``pid`` in it, as a running srsum would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(handle, f"{pid}\n".encode())
    return handle


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tiny_t5_dir, tmp_path):
    run_dir = tmp_path / "run"
    handle = _hold(run_dir / LOCK_FILE, 4242)
    try:
        args = _train_args(tiny_t5_dir, run_dir, "--max-steps", "2", "--eval-samples", "0")
        assert_one_line_error(run(*args), f"run folder {run_dir} is in use by another srsum process (pid 4242",
                              code=1)
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
    finally:
        os.close(handle)
    result = run(*_train_args(tiny_t5_dir, run_dir, "--max-steps", "2", "--eval-samples", "0"))
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-2"]  # the lock file went with the run
    handle = _hold(run_dir / LOCK_FILE, 4343)  # a run holding it while another asks to resume, or to start anew
    try:
        assert_one_line_error(run("train", "--resume", "--output-dir", run_dir), "pid 4343", code=1)
        assert_one_line_error(run(*_train_args(tiny_t5_dir, run_dir, "--max-steps", "2")), "pid 4343", code=1)
    finally:
        os.close(handle)


def _holder_process(lock: Path) -> subprocess.Popen:
    code = ("import sys, time; from srsum.locks import Lock; Lock(sys.argv[1], 'x').acquire(); print('held', "
            "flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_killed_runs_lock_is_released_and_only_dead_runs_temporary_folders_are_removed(tiny_t5_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _holder_process(run_dir / LOCK_FILE)
    live = run_dir / f"checkpoint-6.tmp-{holder.pid}-abcdefgh"  # being written by a live process
    (live / "part").mkdir(parents=True)
    try:
        assert_one_line_error(run(*_train_args(tiny_t5_dir, run_dir, "--max-steps", "2")), f"pid {holder.pid}",
                              code=1)
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the kernel releases its lock
        holder.wait()
    other = _holder_process(tmp_path / "other.lock")  # another live process, not holding this folder
    try:
        (run_dir / f"checkpoint-8.tmp-{other.pid}-abcdefgh").mkdir()
        result = run(*_train_args(tiny_t5_dir, run_dir, "--max-steps", "2", "--eval-samples", "0"))
        assert result.exit_code == 0, result.stderr
        # the dead holder's leftover is removed, the live process's is not
        assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-2", f"checkpoint-8.tmp-{other.pid}-abcdefgh"]
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_summarize_output_is_locked(tiny_t5_dir, tmp_path):
    article = tmp_path / "a.txt"
    article.write_text("The council approved the new park on Monday.")
    output = tmp_path / "out.jsonl"
    handle = _hold(tmp_path / "out.jsonl.lock", 4545)
    try:
        assert_one_line_error(run("summarize", article, "--model", tiny_t5_dir, "--output", output, "--skip-done"),
                              f"--output {output} is in use by another srsum process (pid 4545", code=1)
    finally:
        os.close(handle)
    assert not output.exists() and not (tmp_path / "out.jsonl.partial").exists()


# ---------------------------------------------------------------------------------------------
# 4. resuming on changed data


def test_resume_on_changed_training_data_is_refused_unless_allowed(tiny_t5_dir, tmp_path, monkeypatch):
    import srsum.training

    rows = CNN_SAMPLE.read_text().splitlines()
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(rows[:8]) + "\n")
    real_train = srsum.training.train
    monkeypatch.setattr(srsum.training, "train", lambda config, reporter=None, **kw:
                        real_train(config, reporter, stop_after_steps=3, **kw))
    run_dir = tmp_path / "run"
    args = [arg if arg != CNN_SAMPLE else data for arg in _train_args(tiny_t5_dir, run_dir)]
    result = run(*args, "--max-steps", "6", "--save-steps", "2", "--eval-samples", "0")
    assert result.exit_code == 130, result.stderr
    monkeypatch.setattr(srsum.training, "train", real_train)
    state = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["data"]["rows"] == 8 and state["data"]["files"][0]["path"] == str(data.resolve())

    data.write_text("\n".join(rows[8:16]) + "\n")  # the same file, other rows
    line = assert_one_line_error(run("train", "--resume", "--output-dir", run_dir),
                                 "the training data changed since checkpoint-2", str(data.resolve()), "content",
                                 "--allow-data-change")
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-2"], line
    result = run("train", "--resume", "--output-dir", run_dir, "--allow-data-change")
    assert result.exit_code == 0, result.stderr
    assert any(line.startswith("Warning: the training data changed since checkpoint-2") for line in
               result.stderr.splitlines()), result.stderr
    assert _step_of(last_checkpoint(run_dir)) == 6


def test_data_fingerprints_name_what_changed():
    hub = {"kind": "hub", "name": "abisee/cnn_dailymail", "config": "3.0.0", "split": "train", "rows": 100}
    assert describe_change(hub, dict(hub)) is None
    assert describe_change(hub, {**hub, "rows": 90}) == "training rows 100 -> 90"
    assert describe_change(hub, {**hub, "config": "2.0.0"}) == "config '3.0.0' -> '2.0.0'"
    local = {"kind": "local", "split": "train", "rows": 4,
             "files": [{"path": "/d/a.txt", "size": 10, "mtime_ns": 1, "edges_sha256": "x"}]}
    moved = {**local, "files": [{**local["files"][0], "path": "/d/b.txt"}]}
    assert describe_change(local, moved) == "missing: /d/a.txt; new: /d/b.txt"
    touched = {**local, "files": [{**local["files"][0], "mtime_ns": 2}]}
    assert describe_change(local, touched) == "changed: /d/a.txt (modification time changed)"


def test_a_text_folders_fingerprint_covers_its_articles_and_summaries_only(tmp_path):
    from srsum.training.fingerprint import data_fingerprint

    (tmp_path / "a.txt").write_text("An article.")
    (tmp_path / "a.summary.txt").write_text("Its summary.")
    (tmp_path / "notes.md").write_text("not data")
    before = data_fingerprint(str(tmp_path), "train", 1)
    assert sorted(Path(item["path"]).name for item in before["files"]) == ["a.summary.txt", "a.txt"]
    (tmp_path / "notes.md").write_text("edited notes")
    assert describe_change(before, data_fingerprint(str(tmp_path), "train", 1)) is None
    (tmp_path / "a.summary.txt").write_text("Another summary!")
    change = describe_change(before, data_fingerprint(str(tmp_path), "train", 1))
    assert change.startswith(f"changed: {(tmp_path / 'a.summary.txt').resolve()} (size 12 -> 16 bytes, content")


# ---------------------------------------------------------------------------------------------
# 5. evaluate's references


def test_evaluate_skips_and_counts_empty_references(tmp_path):
    rows = [json.loads(line) for line in CNN_SAMPLE.read_text().splitlines()[:6]]
    rows[1]["summary"] = ""
    rows[2]["summary"] = "  \n"
    rows[3]["summary"] = None
    del rows[4]["summary"]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run("evaluate", "--baseline", "lead-3", "--dataset", data, "--split", "all", "--output-dir",
                 tmp_path / "e", "--json")
    assert result.exit_code == 0, result.stderr
    assert "Warning: 4 of 6 examples have no reference summary (missing, null or empty) and are skipped" \
        in result.stderr
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["skipped_no_reference"] == 4 and metrics["n_examples"] == 2
    predictions = [json.loads(line) for line in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in predictions] == [rows[0]["id"], rows[5]["id"]]


# ---------------------------------------------------------------------------------------------
# 6. planted symbolic links


@pytest.mark.parametrize("skip_done", [True, False])
def test_a_planted_journal_link_is_refused(tiny_t5_dir, tmp_path, skip_done):
    article = tmp_path / "a.txt"
    article.write_text("The council approved the new park on Monday.")
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not srsum's\n")
    (tmp_path / "out.jsonl.partial").symlink_to(secret)
    args = ["summarize", article, "--model", tiny_t5_dir, "--output", tmp_path / "out.jsonl"]
    assert_one_line_error(run(*args, *(["--skip-done"] if skip_done else [])),
                          f"refusing to open {tmp_path / 'out.jsonl.partial'}", "symbolic link", code=2)
    assert secret.read_text() == "not srsum's\n" and (tmp_path / "out.jsonl.partial").is_symlink()
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.lock").exists()


def test_a_planted_lock_link_is_refused(tiny_t5_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = tmp_path / "elsewhere"
    (run_dir / LOCK_FILE).symlink_to(target)
    assert_one_line_error(run(*_train_args(tiny_t5_dir, run_dir, "--max-steps", "2")),
                          f"refusing to open {run_dir / LOCK_FILE}", "symbolic link", code=2)
    assert not target.exists()


def test_a_users_symlinked_output_is_written_through(best, tmp_path):
    article = tmp_path / "a.txt"
    article.write_text("The council approved the new park on Monday.")
    (tmp_path / "real").mkdir()
    link = tmp_path / "out.jsonl"
    link.symlink_to(tmp_path / "real" / "summaries.jsonl")
    result = run("summarize", article, "--model", best, "--max-length", "4", "--num-beams", "1", "--output", link)
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink()
    assert [json.loads(line)["id"] for line in (tmp_path / "real" / "summaries.jsonl").read_text().splitlines()] == [
        "a"]
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["summaries.jsonl"]


@pytest.fixture
def best(trained_t5):
    return str(trained_t5.run_dir / "best")


def test_temporary_files_are_new_files_never_links(tmp_path):
    planted = tmp_path / "x.json"
    target = tmp_path / "target"
    planted.symlink_to(target)
    with pytest.raises(Exception, match="symbolic link"):
        checkpoints.write_new_file(planted, "{}")
    assert not target.exists()
    checkpoints.atomic_write_json(planted, {"a": 1})  # the final name of an atomic write is replaced, not followed
    assert not planted.is_symlink() and json.loads(planted.read_text()) == {"a": 1} and not target.exists()
