"""The ``srsum`` command line through Typer's CliRunner, plus real runs of the installed console script."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CNN_SAMPLE, interrupt_generate
from typer.testing import CliRunner

from srsum.cli import app
from srsum.evaluation import evaluate

pytestmark = pytest.mark.usefixtures("single_thread")

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(arg) for arg in args], input=input)


def assert_one_line_error(result, *fragments, code=2):
    """Exit ``code``, exactly one ``Error:`` line on stderr containing ``fragments``, no traceback."""
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def cnn(shared_data):
    return str(CNN_SAMPLE)


@pytest.fixture
def best(trained_t5):
    return str(trained_t5.run_dir / "best")


@pytest.fixture
def article(tmp_path):
    path = tmp_path / "article.txt"
    path.write_text("The council approved the new park on Monday. Work starts in May. Residents welcomed it.")
    return path


# ---------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize("command", [[], ["train"], ["summarize"], ["evaluate"], ["profile"]])
def test_help_of_the_app_and_every_command(command):
    result = run(*command, "--help")
    assert result.exit_code == 0, result.stderr
    if command:
        assert "Examples" in result.stdout and f"srsum {command[0]}" in result.stdout
    else:
        for name in ("train", "summarize", "evaluate", "profile"):
            assert name in result.stdout


def test_command_line_mistakes_are_one_line():
    assert_one_line_error(run("summarize", "x.txt", "--num-beams", "many"), "--num-beams", code=2)
    assert_one_line_error(run("evaluate"), "Missing option '--dataset'", code=2)
    assert_one_line_error(run("frobnicate"), "No such command", code=2)


# ---------------------------------------------------------------------------------------------
# summarize


def test_summarize_prints_a_summary(best, article):
    result = run("summarize", article, "--model", best, "--num-beams", "2", "--max-length", "8")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert "generating" in result.stderr  # progress bar


def test_summarize_json_stdin_folder_and_output_file(best, article, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("First article text. It is short.")
    (folder / "b.txt").write_text("Second article text.")
    result = run("summarize", article, folder, "-", "--model", best, "--json", "--num-beams", "1",
                 "--max-length", "5", "--quiet", input="An article read from standard input.")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["id"] for row in rows] == ["article", "a", "b", "stdin"]
    assert result.stderr == ""  # --quiet: no progress bars
    output = tmp_path / "out" / "summaries.jsonl"
    output.parent.mkdir()
    result = run("summarize", article, "--model", best, "--output", output, "--max-length", "5")
    assert result.exit_code == 0 and result.stdout == ""
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["article"]
    assert [p.name for p in output.parent.iterdir()] == ["summaries.jsonl"]


def test_summarize_warns_about_non_utf8_and_long_articles(best, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Caf\xe9 owners met the mayor. They talked.".encode("latin-1"))
    long = tmp_path / "long.txt"
    long.write_text(" ".join(f"Sentence {i} of a long article." for i in range(40)))
    result = run("summarize", bad, long, "--model", best, "--max-length", "5", "--num-beams", "1")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert any("latin1.txt: not valid UTF-8" in line and "replaced" in line for line in warnings)
    assert any("article 'long' is" in line and "max source length 64: truncated to 64 tokens" in line
               for line in warnings)
    assert result.stdout.count("==>") == 2


def test_one_bad_article_is_named_and_the_others_are_summarized(best, article, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    output = tmp_path / "s.jsonl"
    result = run("summarize", article, empty, "--model", best, "--max-length", "5", "--output", output)
    assert result.exit_code == 2  # bad input (the others are still summarized)
    assert "Error: " in result.stderr and "empty.txt is empty" in result.stderr
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["article"]


def test_summarize_reads_a_named_text_column(best, tmp_path):
    table = tmp_path / "posts.jsonl"
    table.write_text("".join(json.dumps({"id": f"p{i}", "body": f"Post {i} says the park opens in May."}) + "\n"
                             for i in range(2)))
    assert_one_line_error(run("summarize", table, "--model", best), "no text column found", "--text-column")
    result = run("summarize", table, "--model", best, "--text-column", "body", "--max-length", "4", "--json")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["p0", "p1"]


@pytest.mark.parametrize("to_file", [True, False])
def test_ctrl_c_keeps_the_finished_summaries(best, tmp_path, monkeypatch, to_file):
    interrupt_generate(monkeypatch, at_call=3)
    files = []
    for i in range(5):  # article i is longer than article i - 1: batches run a4, a3 | a2, a1 | a0
        files.append(tmp_path / f"a{i}.txt")
        files[-1].write_text(" ".join(["The park opens in May."] * (i + 1)))
    output = tmp_path / "out.jsonl"
    args = ["summarize", *files, "--model", best, "--max-length", "3", "--num-beams", "1", "--batch-size", "2",
            "--json"] + (["--output", output] if to_file else [])
    result = run(*args)
    assert_one_line_error(result, "interrupted", code=130)
    if to_file:
        assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["a1", "a2", "a3", "a4"]
        assert "holds the 4 of 5 summaries finished" in result.stderr
        assert sorted(p.name for p in output.parent.iterdir() if p.suffix == ".jsonl") == ["out.jsonl"]
    else:
        assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["a1", "a2", "a3", "a4"]


def test_summarize_with_and_without_the_blocked_encoder_agree(best, tmp_path):
    article = tmp_path / "long.txt"
    article.write_text(" ".join(f"Sentence {i} says the harbour opens in May." for i in range(12)))
    outputs = [run("summarize", article, "--model", best, "--max-length", "6", "--num-beams", "1",
                   "--encoder-block", block, "--max-source-length", "64") for block in ("0", "16", "7")]
    assert all(result.exit_code == 0 for result in outputs), outputs[0].stderr
    assert outputs[0].stdout == outputs[1].stdout == outputs[2].stdout != ""
    assert_one_line_error(run("summarize", article, "--model", best, "--encoder-block", "-3"), "--encoder-block",
                          code=2)


def test_a_truncated_checkpoint_is_one_line(best, article, tmp_path, cnn):
    cut = tmp_path / "cut"
    shutil.copytree(best, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_one_line_error(run("summarize", article, "--model", cut), "model.safetensors is damaged or incomplete")
    assert_one_line_error(run("evaluate", "--model", cut, "--dataset", cnn, "--limit", "2", "--output-dir",
                              tmp_path / "e"), "damaged or incomplete")


def test_skip_done_continues_a_killed_run(best, tmp_path):
    files = []
    for i in range(4):
        files.append(tmp_path / f"a{i}.txt")
        files[-1].write_text(f"Article {i}: the park opens in May.")
    output = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.partial"  # what a killed run leaves: two whole lines and a cut one
    journal.write_text(json.dumps({"id": "a2", "summary": "kept two"}) + "\n"
                       + json.dumps({"id": "a0", "summary": "kept zero"}) + "\n" + '{"id": "a1", "summ')
    args = ["summarize", *files, "--model", best, "--max-length", "3", "--num-beams", "1", "--output", output]
    result = run(*args, "--skip-done")
    assert result.exit_code == 0, result.stderr
    assert "2 of 4 articles already have a summary" in result.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["a0", "a1", "a2", "a3"]
    assert rows[0]["summary"] == "kept zero" and rows[2]["summary"] == "kept two"
    assert not journal.exists()
    assert "4 of 4 articles already have a summary" in run(*args, "--skip-done").stderr  # nothing left to do
    journal.write_text(json.dumps({"id": "a3", "summary": "stale"}) + "\n")
    assert run(*args).exit_code == 0  # without --skip-done: everything again, the stale journal dropped
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["a0", "a1", "a2", "a3"] and "stale" not in output.read_text()
    assert not journal.exists()
    assert_one_line_error(run("summarize", *files, "--model", best, "--skip-done"), "--skip-done needs --output",
                          code=2)


def _missing(tmp):
    return tmp / "missing.txt"


def _empty(tmp):
    (tmp / "empty.txt").write_text("")
    return tmp / "empty.txt"


def _folder_without_txt(tmp):
    (tmp / "nodocs").mkdir()
    (tmp / "nodocs" / "notes.md").write_text("not a .txt file")
    return tmp / "nodocs"


@pytest.mark.parametrize("make, fragment", [(_missing, "file not found"), (_empty, "is empty"),
                                            (_folder_without_txt, "contains no .txt files")])
def test_summarize_unusable_input_files(best, tmp_path, make, fragment):
    assert_one_line_error(run("summarize", make(tmp_path), "--model", best), fragment)


def test_summarize_without_any_model_says_how_to_get_one(article, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run("summarize", article), "srsum train --model t5-small --dataset cnn_dailymail",
                          "--model t5-small")


def test_summarize_uses_the_newest_checkpoint_under_models(trained_t5, article, monkeypatch):
    monkeypatch.chdir(trained_t5.run_dir.parent.parent)  # holds models/run-t5
    result = run("summarize", article, "--max-length", "5", "--num-beams", "1")
    assert result.exit_code == 0, result.stderr
    assert "using the newest checkpoint: models/run-t5/best" in result.stderr


def test_summarize_bad_model_and_unwritable_output(best, article, tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert_one_line_error(run("summarize", article, "--model", tmp_path / "gpt"), "'gpt2' is not supported")
    (tmp_path / "nothing").mkdir()
    assert_one_line_error(run("summarize", article, "--model", tmp_path / "nothing"),
                          "neither an srsum checkpoint nor a T5/BART model")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run("summarize", article, "--model", best, "--output", blocker / "s.jsonl"),
                          "cannot write to output folder")
    assert_one_line_error(run("summarize", article, "--model", best, "--num-beams", "0"), "--num-beams must be", code=2)
    assert_one_line_error(run("summarize", article, "--model", best, "--step", "graphs"), "--step must be one of", code=2)
    if not torch.cuda.is_available():
        assert_one_line_error(run("summarize", article, "--model", best, "--step", "graph", "--device", "cpu"),
                              "'graph' captures CUDA graphs and needs a CUDA device", code=2)
    assert_one_line_error(run("summarize", article, "--model", best, "--device", "cuda:7"), "--device", code=2)


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_lead3_prints_a_table_and_writes_files(cnn, tmp_path):
    out = tmp_path / "eval"
    result = run("evaluate", "--baseline", "lead-3", "--dataset", cnn, "--limit", "20", "--output-dir", out)
    assert result.exit_code == 0, result.stderr
    for name in ("ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum", "lead-3", "20 examples"):
        assert name in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.jsonl"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["rouge"] == evaluate(cnn, baseline="lead-3", limit=20)["rouge"]
    assert f"{saved['rouge']['rouge1']:.2f}" in result.stdout


def test_evaluate_a_checkpoint_as_json(best, cnn, tmp_path):
    result = run("evaluate", "--model", best, "--dataset", cnn, "--limit", "2", "--num-beams", "2",
                 "--max-length", "6", "--json", "--quiet", "--output-dir", tmp_path / "e")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["model"] == best and metrics["generation"]["num_beams"] == 2 and metrics["n_examples"] == 2


def test_evaluate_default_output_dir(cnn, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("evaluate", "--baseline", "lead-3", "--dataset", cnn, "-n", "3", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "evaluations" / "lead-3-cnn_dailymail-test-sample-test" / "metrics.json").is_file()


def test_evaluate_unknown_dataset_column_and_hub_failure(cnn, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert_one_line_error(run("evaluate", "--baseline", "lead-3", "--dataset", tmp_path / "nope.jsonl",
                              "--output-dir", out), "file or folder not found")
    assert_one_line_error(run("evaluate", "--baseline", "lead-3", "--dataset", cnn, "--summary-column", "abstract",
                              "--output-dir", out), "summary column 'abstract' not found", "available columns")
    assert_one_line_error(run("evaluate", "--baseline", "lead-3", "--dataset", cnn, "--split", "train",
                              "--output-dir", out), "no rows with split 'train'")

    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert_one_line_error(run("evaluate", "--baseline", "lead-3", "--dataset", "someone/unknown-dataset",
                              "--output-dir", out), "could not download or load dataset 'someone/unknown-dataset'",
                          "--dataset path/to/file.jsonl")
    assert_one_line_error(run("evaluate", "--baseline", "lead-3", "--dataset", "xsum", "--output-dir", out),
                          "EdinburghNLP/xsum", "local file")
    assert not any(out.iterdir())  # nothing half-written


def test_evaluate_bad_options(cnn, best, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run("evaluate", "--baseline", "lead-3", "--dataset", cnn, "--output-dir", blocker / "x"),
                          "cannot write to output directory")
    assert_one_line_error(run("evaluate", "--baseline", "oracle", "--dataset", cnn), "unknown baseline 'oracle'", code=2)
    assert_one_line_error(run("evaluate", "--baseline", "lead-3", "--model", best, "--dataset", cnn),
                          "either --model or --baseline", code=2)


# ---------------------------------------------------------------------------------------------
# train


def _train_args(model_dir, output_dir, *extra):
    return ["train", "--model", model_dir, "--dataset", str(CNN_SAMPLE), "--train-split", "test",
            "--validation-split", "test", "--train-limit", "4", "--eval-samples", "2", "--batch-size", "2",
            "--max-source-length", "64", "--max-target-length", "16", "--seg-size", "8", "--learning-rate", "1e-3",
            "--output-dir", output_dir, *extra]


def test_train_bart_then_evaluate_and_summarize_with_the_checkpoint(tiny_bart_dir, article, tmp_path):
    run_dir = tmp_path / "models" / "bart"
    result = run(*_train_args(tiny_bart_dir, run_dir, "--epochs", "2", "--json"))
    assert result.exit_code == 0, (result.stderr, result.exception)
    outcome = json.loads(result.stdout)
    assert outcome["global_step"] == outcome["total_steps"] == 4 and outcome["run_dir"] == str(run_dir)
    assert "training" in result.stderr and "validation after step 2" in result.stderr  # progress and metrics
    # the memory per decoder layer, one line each at the start (after calibration) and after each evaluation
    memory = [line for line in result.stderr.splitlines() if line.startswith("memory ")]
    assert len(memory) == 3 and memory[0].startswith("memory at start (W calibrated to ratio 0.05 on 4 training ")
    assert all(" | layer 1 ratio " in line for line in memory)
    state = json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["srformer"]["srformer_attention"] == "srformer" and state["model_type"] == "srformer_bart"

    result = run("evaluate", "--model", run_dir / "best", "--dataset", CNN_SAMPLE, "--limit", "2", "--num-beams",
                 "2", "--max-length", "6", "--output-dir", tmp_path / "eval")
    assert result.exit_code == 0, result.stderr
    assert "ROUGE-Lsum" in result.stdout
    result = run("summarize", article, "--model", run_dir / "best", "--max-length", "6", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["id"] == "article"


def test_ctrl_c_during_training_then_resume(tiny_t5_dir, tmp_path, monkeypatch):
    import srsum.training

    real_train = srsum.training.train
    monkeypatch.setattr(srsum.training, "train", lambda config, reporter=None, **kw:
                        real_train(config, reporter, stop_after_steps=3, **kw))
    run_dir = tmp_path / "run"
    result = run(*_train_args(tiny_t5_dir, run_dir, "--epochs", "2", "--save-steps", "2", "--eval-samples", "0"))
    line = assert_one_line_error(result, "training interrupted at step 3", str(run_dir / "checkpoint-2"),
                                 "--resume", code=130)
    assert line.endswith(f"srsum train --resume --output-dir {run_dir}`")
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-2"]
    monkeypatch.setattr(srsum.training, "train", real_train)

    assert_one_line_error(run("train", "--resume", "--output-dir", run_dir, "--seg-size", "32"),
                          "trained with --seg-size 8, not 32", code=2)
    assert_one_line_error(run("train", "--resume", "--output-dir", run_dir, "--attention", "full"),
                          "trained with --attention srformer, not full", code=2)
    result = run("train", "--resume", "--output-dir", run_dir, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["global_step"] == outcome["total_steps"] == 4
    assert outcome["resumed_from"] == str(run_dir / "checkpoint-2")


def test_train_bad_input(tiny_t5_dir, tmp_path):
    assert_one_line_error(run("train", "--model", str(tiny_t5_dir)), "--dataset required", code=2)
    assert_one_line_error(run("train", "--preset", "t5-huge", "--dataset", CNN_SAMPLE), "no preset 't5-huge'", code=2)
    assert_one_line_error(run(*_train_args(tiny_t5_dir, tmp_path / "r", "--attention", "sparse")),
                          "unknown variant 'sparse'", code=2)
    assert_one_line_error(run(*_train_args(tiny_t5_dir, tmp_path / "r", "--text-column", "body")),
                          "text column 'body' not found")
    assert_one_line_error(run(*_train_args(tiny_t5_dir, tmp_path / "r", "--memory-ratio", "-1")),
                          "--memory-ratio must be a positive number, got -1.0", code=2)
    assert_one_line_error(run(*_train_args(tiny_t5_dir, tmp_path / "r", "--w-init", "foo")),
                          "--w-init must be one of calibrated, paper, got 'foo'", code=2)
    assert_one_line_error(run("train", "--resume", "--output-dir", tmp_path / "empty"), "no complete checkpoint")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# the installed console script, for real


def _console_script() -> str:
    candidate = Path(sys.executable).with_name("srsum")
    found = str(candidate) if candidate.exists() else shutil.which("srsum")
    if found is None:
        pytest.skip("the srsum console script is not installed (pip install -e . --no-deps)")
    return found


def test_installed_console_script(cnn, tmp_path):
    script = _console_script()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    commands = {
        "help": [script, "--help"],
        "evaluate": [script, "evaluate", "--baseline", "lead-3", "--dataset", cnn, "--limit", "10", "--json",
                     "--output-dir", str(tmp_path / "eval")],
    }
    # started together: each pays the interpreter + torch import once, in parallel
    processes = {name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                        cwd=tmp_path) for name, argv in commands.items()}
    done = {name: (process.communicate(timeout=300), process.returncode) for name, process in processes.items()}

    (out, err), code = done["help"]
    assert code == 0, err
    assert all(name in out for name in ("train", "summarize", "evaluate", "profile"))

    (out, err), code = done["evaluate"]
    assert code == 0, err
    assert json.loads(out)["rouge"] == evaluate(cnn, baseline="lead-3", limit=10)["rouge"]
    assert (tmp_path / "eval" / "predictions.jsonl").is_file()


def test_console_entry_point_exit_codes(tmp_path, monkeypatch, capsys):
    """main() (what the console script runs) exits with one Error line: 2 for bad input or a bad command line,
    1 for a runtime failure (here: the Hub cannot be reached)."""
    import socket

    from srsum.cli import main

    def unreachable(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    article = tmp_path / "a.txt"
    article.write_text("The park opens in May.")
    for argv, code, message in (
        (["summarize", str(tmp_path / "missing.txt"), "--model", str(tmp_path)], 2,
         f"Error: file not found: {tmp_path / 'missing.txt'}"),
        (["evaluate", "--dataset"], 2, "Error: Option '--dataset' requires an argument."),
        (["summarize", str(article), "--model", "srsum-test/no-such-model"], 1,
         "Error: model: 'srsum-test/no-such-model' is neither a local folder nor in the Hugging Face cache"),
    ):
        monkeypatch.setattr(sys, "argv", ["srsum", *argv])
        with pytest.raises(SystemExit) as caught:
            main()
        captured = capsys.readouterr()
        assert caught.value.code == code and captured.out == ""
        assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith(message)
