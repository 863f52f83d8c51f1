"""Data-parallel training (issue 17): two CPU processes under torchrun (gloo) train like one process with the
same global batch, write one checkpoint, resume exactly; plus the sharding helpers, in one process."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CNN_SAMPLE, TOKENIZER_DIRS, tiny_model, tiny_training_config

from srsum.engine import load_model
from srsum.training import TrainingConfig, train
from srsum.training.batches import epoch_order, micro_batches, step_groups, steps_per_epoch
from srsum.training.distributed import (agree, gather_shards, map_sharded, on_main, reduce_sums, shard,
                                        shard_bounds, single_process_launch_warning)
from srsum.errors import SrsumError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------
# the pieces, in one process


def test_shards_cover_the_list_in_order_and_differ_by_at_most_one():
    for count in range(0, 12):
        for processes in (1, 2, 3, 5):
            bounds = [shard_bounds(count, processes, rank) for rank in range(processes)]
            assert bounds[0][0] == 0 and bounds[-1][1] == count
            assert all(left[1] == right[0] for left, right in zip(bounds, bounds[1:]))
            sizes = [end - start for start, end in bounds]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        shard_bounds(4, 2, 2)


def test_micro_batches_of_all_processes_are_the_global_batches_of_one():
    order = epoch_order(9, seed=42, epoch=1)
    assert sorted(order) == list(range(9)) and order == epoch_order(9, seed=42, epoch=1) != epoch_order(9, 42, 2)
    one = micro_batches(order, batch_size=4, processes=1, rank=0)
    two = [micro_batches(order, batch_size=2, processes=2, rank=rank) for rank in (0, 1)]
    assert [len(rows) for rows in one] == [4, 4, 1]
    assert [a + b for a, b in zip(*two)] == one  # rank 0's part, then rank 1's, make the single batch
    assert two[1][-1] == []  # the last global micro-batch has one row: rank 1 gets none
    assert steps_per_epoch(9, 2, 2, 1) == steps_per_epoch(9, 4, 1, 1) == 3
    assert steps_per_epoch(16, 2, 2, 1) * 2 == steps_per_epoch(16, 2, 1, 1) == 8
    assert steps_per_epoch(9, 1, 2, 2) == 3
    assert [len(group) for group in step_groups(micro_batches(order, 1, 2, 0), 2)] == [2, 2, 1]


def test_single_process_helpers_return_their_input():
    items = list(range(7))
    assert shard(items) == items and gather_shards(items) == items
    assert map_sharded(items, lambda part: [x * x for x in part]) == [x * x for x in items]
    assert reduce_sums([1.5, 2]) == [1.5, 2.0]
    assert on_main(lambda: "name") == "name"
    with pytest.raises(SrsumError, match="bad"):
        agree(lambda: (_ for _ in ()).throw(SrsumError("bad")))
    with pytest.raises(ValueError, match="2 results for 7 items"):
        map_sharded(items, lambda part: part[:2])


def test_accelerate_cpu_launcher_that_started_one_process_is_named(monkeypatch):
    for name in ("ACCELERATE_USE_CPU", "MASTER_ADDR", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert single_process_launch_warning() is None
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # what `accelerate launch --cpu --num_processes 2` sets ...
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # ... for its one process
    assert "torchrun --nproc_per_node N" in single_process_launch_warning()
    monkeypatch.setenv("WORLD_SIZE", "2")  # a real multi-process launch
    assert single_process_launch_warning() is None


# ---------------------------------------------------------------------------------------------
# two processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS`` (CPU, gloo), from the repository root; fails the test on a bad exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    for attempt in range(2):  # the free port may be taken by another program before torchrun binds it
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                   "127.0.0.1", "--master_port", str(_free_port()), *args]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode == 0 or "address already in use" not in done.stderr.lower():
            break
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def _cli_args(config: TrainingConfig) -> list[str]:
    flags = {"model": config.model, "dataset": config.dataset, "train-split": config.train_split,
             "validation-split": config.validation_split, "train-limit": config.train_limit,
             "eval-samples": config.eval_samples, "batch-size": config.batch_size, "epochs": config.epochs,
             "max-source-length": config.max_source_length, "max-target-length": config.max_target_length,
             "seg-size": config.seg_size, "learning-rate": config.learning_rate,
             "logging-steps": config.logging_steps, "save-total-limit": config.save_total_limit,
             "output-dir": config.output_dir}
    return [part for name, value in flags.items() for part in (f"--{name}", str(value))] + ["--cpu"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_model(str(folder)).state_dict().items()}


def _assert_same_weights(left: Path, right: Path) -> None:
    first, second = _weights(left), _weights(right)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def _state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, tiny_t5_dir, trained_t5):
    # 2 processes x batch 2 (CLI under torchrun) against 1 process x batch 4, in this process
    config = tiny_training_config(tiny_t5_dir, tmp_path / "two", eval_samples=3, save_total_limit=1)
    done = _torchrun("-m", "srsum.cli", "train", *_cli_args(config), "--json")
    reference = train(tiny_training_config(tiny_t5_dir, tmp_path / "one", eval_samples=3, batch_size=4))

    printed = json.loads(done.stdout)  # only the main process prints
    assert done.stderr.count("Warning: 8 of 8 training articles are longer") == 1
    run = tmp_path / "two"
    assert printed["checkpoint"] == str(run / "checkpoint-4") and printed["global_step"] == 4
    assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoint-4"]  # one writer: no .tmp folders
    state = _state(run / "checkpoint-4")
    single = _state(trained_t5.checkpoint)  # the same settings on one process (batch 2)
    assert state["num_processes"] == 2 and single["num_processes"] == 1
    assert state["steps_per_epoch"] * 2 == single["steps_per_epoch"] == 4
    assert state["global_batch_size"] == 4 and state["total_steps"] == 4
    assert (run / "checkpoint-4" / "rng.json").is_file() and (run / "checkpoint-4" / "rng-rank1.json").is_file()
    # the same weights, losses and validation as one process with the same global batch
    expected = _state(reference.checkpoint)
    assert expected["steps_per_epoch"] == state["steps_per_epoch"]
    _assert_same_weights(reference.checkpoint, run / "checkpoint-4")
    losses = [[entry["loss"] for entry in s["log_history"] if "loss" in entry] for s in (state, expected)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    # validation on 3 examples: 2 on the main process, 1 on the other, gathered
    assert state["num_eval_examples"] == 3
    assert state["metrics"]["loss"] == pytest.approx(expected["metrics"]["loss"], abs=2e-4)
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert state["metrics"][name] == pytest.approx(expected["metrics"][name], abs=1e-3), name


@pytest.mark.slow
def test_an_error_under_two_processes_is_one_line_from_the_main_process(tmp_path, tiny_t5_dir):
    config = tiny_training_config(tiny_t5_dir, tmp_path / "run", dataset=str(tmp_path / "missing.jsonl"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "srsum.cli", "train", *_cli_args(config)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1  # torchrun's own code whenever a worker fails, whatever the worker's (2 here)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "missing.jsonl" in errors[0], done.stderr[-3000:]
    # no traceback from srsum's processes (torchrun prints its own report): no frame in the package's own files,
    # wherever the checkout lies (a clone folder named srsum holds the venv too, so "/srsum/" alone says nothing)
    assert f"{REPO / 'srsum'}{os.sep}" not in done.stderr


def _dropout_t5(folder: Path) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIRS["t5"]))
    tiny_model("t5", vocab_size=len(tokenizer), dropout_rate=0.1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


RUNNER = """
import json, os, sys
from srsum.errors import SrsumError
from srsum.training import TrainingConfig, TrainingInterrupted, train
from srsum.training.distributed import agree, map_sharded, on_main, shard
spec = json.loads(sys.argv[1])
def say(*words):  # one write per line: the two processes share the pipe, and print() writes in pieces
    sys.stdout.write(" ".join(str(word) for word in words) + "\\n")
    sys.stdout.flush()
for name, stop in (("straight", None), ("interrupted", spec["stop"])):
    try:
        train(TrainingConfig(**spec["config"], output_dir=spec["root"] + "/" + name), stop_after_steps=stop)
    except TrainingInterrupted as interrupted:
        say("interrupted at", interrupted.step, interrupted.checkpoint)
# the helpers other commands can use, under the same two processes
rank = int(os.environ["RANK"])
squares = map_sharded(list(range(5)), lambda part: [x * x for x in part])
def fail_on_rank_1():
    if rank == 1:
        raise SrsumError("rank 1 cannot read the file")
try:
    agree(fail_on_rank_1)
    agreed = "no error"
except SrsumError as error:
    agreed = str(error)
say("helpers", json.dumps({"rank": rank, "shard": shard(list(range(5))), "squares": squares,
                           "main_pid": on_main(os.getpid), "agreed": agreed}))
"""


@pytest.mark.slow
def test_resume_under_two_processes_continues_exactly_with_dropout(tmp_path):
    # 9 rows, 2 processes x batch 2: 3 steps an epoch, the last with one row (the other process gets none);
    # dropout 0.1 and summaries of up to 64 tokens: resuming must restore each process's own random state
    model = _dropout_t5(tmp_path / "dropout-t5")
    settings = dict(model=str(model), dataset=str(CNN_SAMPLE), train_split="test", validation_split="test",
                    train_limit=9, eval_samples=0, batch_size=2, epochs=2, max_source_length=64,
                    max_target_length=64, seg_size=16, learning_rate=1e-3, logging_steps=1, save_steps=2, cpu=True)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    done = _torchrun(str(runner), json.dumps({"config": settings, "root": str(tmp_path), "stop": 5}))
    interrupted = tmp_path / "interrupted"
    assert f"interrupted at 5 {interrupted / 'checkpoint-4'}" in done.stdout
    # a launcher may prefix worker lines ("[rank0]:"): find the records anywhere in a line
    found = (re.search(r"helpers (\{.*\})\s*$", line) for line in done.stdout.splitlines())
    helpers = sorted((json.loads(match.group(1)) for match in found if match), key=lambda seen: seen["rank"])
    assert [seen["shard"] for seen in helpers] == [[0, 1, 2], [3, 4]], done.stdout[-3000:]
    assert all(seen["squares"] == [0, 1, 4, 9, 16] for seen in helpers)  # gathered in order, on both
    assert helpers[0]["main_pid"] == helpers[1]["main_pid"]
    assert all(seen["agreed"] == "rank 1 cannot read the file" for seen in helpers)  # raised on both
    assert sorted(p.name for p in interrupted.iterdir()) == ["checkpoint-3", "checkpoint-4"]  # epoch 1, step 4
    assert _state(interrupted / "checkpoint-4")["num_processes"] == 2
    # summaries of different lengths: the processes drew different dropout masks, so their random states differ
    rng = [json.loads((interrupted / "checkpoint-4" / name).read_text()) for name in ("rng.json", "rng-rank1.json")]
    assert rng[0]["torch"] != rng[1]["torch"]

    # a one-process resume of a two-process run is refused
    with pytest.raises(SrsumError, match="trained on 2 processes, this run has 1"):
        train(TrainingConfig(model="", dataset="", resume=True, output_dir=str(interrupted)))
    _torchrun("-m", "srsum.cli", "train", "--resume", "--output-dir", str(interrupted), "--quiet")
    straight = tmp_path / "straight"
    final = _state(interrupted / "checkpoint-6")
    assert final["global_step"] == 6 and final["steps_per_epoch"] == 3 and final["num_processes"] == 2
    assert [e["step"] for e in final["log_history"] if "loss" in e] == list(range(1, 7))
    losses = [[e["loss"] for e in _state(run / "checkpoint-6")["log_history"] if "loss" in e]
              for run in (straight, interrupted)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    _assert_same_weights(straight / "checkpoint-6", interrupted / "checkpoint-6")
