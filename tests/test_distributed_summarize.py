"""srsum summarize under a launcher (issue 29): two CPU processes share the articles; the main process writes
the output in input order, the same as one process's, and the journals and --skip-done still work."""

import json

import pytest
from conftest import CNN_SAMPLE
from test_distributed import _torchrun
from typer.testing import CliRunner

from srsum.cli import app
from srsum.summarize import OutputFile

pytestmark = pytest.mark.usefixtures("single_thread")


def _articles(tmp_path, count=5):
    rows = [json.loads(line) for line in CNN_SAMPLE.read_text().splitlines()[:count]]
    path = tmp_path / "articles.jsonl"
    path.write_text("".join(json.dumps({"id": row["id"], "article": row["article"]}) + "\n" for row in rows))
    return path


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_summarize_under_two_processes_equals_one(trained_t5, shared_data, tmp_path):
    best = str(trained_t5.run_dir / "best")
    articles = _articles(tmp_path)
    flags = ["--model", best, "--num-beams", "1", "--max-length", "6", "--batch-size", "2", "--device", "cpu",
             "--quiet"]
    one = tmp_path / "one.jsonl"
    single = CliRunner().invoke(app, ["summarize", str(articles), "--output", str(one), *flags])
    assert single.exit_code == 0, single.output
    two = tmp_path / "two.jsonl"
    _torchrun("-m", "srsum.cli", "summarize", str(articles), "--output", str(two), *flags)
    assert two.read_text() == one.read_text()  # same summaries, input order
    assert sorted(p.name for p in tmp_path.iterdir()) == ["articles.jsonl", "one.jsonl", "two.jsonl"]  # no journal
    printed = _torchrun("-m", "srsum.cli", "summarize", str(articles), "--json", *flags)
    assert printed.stdout.splitlines() == one.read_text().splitlines()  # printed once, by the main process
    # a run killed after two summaries, one in each process's journal: --skip-done keeps them, does the rest
    rows = one.read_text().splitlines()
    kept = tmp_path / "kept.jsonl"
    (tmp_path / "kept.jsonl.partial").write_text(rows[3] + "\n")
    (tmp_path / "kept.jsonl.partial.1").write_text(rows[1] + "\n")
    _torchrun("-m", "srsum.cli", "summarize", str(articles), "--output", str(kept), "--skip-done", *flags)
    assert kept.read_text() == one.read_text()
    assert not list(tmp_path.glob("kept.jsonl.partial*"))


def test_each_process_journals_to_its_own_file_and_the_main_one_reads_them_back(tmp_path):
    output = tmp_path / "out.jsonl"
    other = OutputFile(output, rank=1)  # no lock: the main process holds it
    other.add({"id": "b", "summary": "B"})
    other.close()
    assert (tmp_path / "out.jsonl.partial.1").read_text() == '{"id": "b", "summary": "B"}\n'
    main = OutputFile(output, skip_done=True)
    assert set(main.done) == {"b"}
    main.add({"id": "a", "summary": "A"})
    assert main.finish([type("E", (), {"id": i})() for i in "ab"]) == 2
    main.close()
    assert _ids(output) == ["a", "b"] and not list(tmp_path.glob("out.jsonl.partial*"))
    fresh = OutputFile(output, rank=1)  # a new run without --skip-done: an old journal of its rank is gone
    fresh.close()
    (tmp_path / "out.jsonl.partial.1").write_text('{"id": "z", "summary": "Z"}\n')
    OutputFile(output).close()  # the main process of a new run removes every old journal
    assert not list(tmp_path.glob("out.jsonl.partial*"))
