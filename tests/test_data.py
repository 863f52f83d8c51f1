"""Tests for srsum.data: local formats, split filtering, Hub loading and failure, articles, lead-n."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from srsum.data import (
    DATASETS,
    DataWarning,
    Example,
    collect_articles,
    lead_n,
    load_examples,
    read_article,
    source_prefix,
)
from srsum.errors import SrsumError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CNNDM = SHARED / "cnn_dailymail" / "cnn_dailymail-test-sample.jsonl"
MEDIASUM = SHARED / "mediasum" / "mediasum-unknown-split-sample.jsonl"
XSUM_FIXTURE_JSON = SHARED / "xsum" / "original" / "transformers-tests_samples-xsum-sample.json"

ROWS = [
    {"id": "a1", "article": "First article. It has two sentences.", "summary": "First summary."},
    {"id": "a2", "article": "Second article.", "summary": "Second summary."},
]


def _shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (needs the read-only shared/ folder beside the repo)")
    return path


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- real shared data ------------------------------------------------------------------------


def test_cnndm_sample_defaults_pick_article_and_summary():
    rows = [json.loads(line) for line in _shared(CNNDM).read_text(encoding="utf-8").splitlines()]
    examples = load_examples(str(CNNDM))
    assert len(examples) == 250
    assert examples[0] == Example(rows[0]["id"], rows[0]["article"], rows[0]["summary"])
    assert load_examples(str(CNNDM), limit=3) == examples[:3]


def test_split_filter_refuses_to_drop_everything_and_names_splits():
    with pytest.raises(SrsumError, match=r"no rows with split 'test'.*available splits: unknown") as info:
        load_examples(str(_shared(MEDIASUM)))
    _one_line_error(info)
    assert len(load_examples(str(MEDIASUM), split="unknown")) == 18
    assert len(load_examples(str(MEDIASUM), split="all")) == 18


def test_json_lines_saved_as_json_with_document_column():
    examples = load_examples(str(_shared(XSUM_FIXTURE_JSON)))
    assert len(examples) == 10
    first = json.loads(XSUM_FIXTURE_JSON.read_text(encoding="utf-8").splitlines()[0])
    assert examples[0].text == first["document"] and examples[0].summary == first["summary"]


# --- local formats ---------------------------------------------------------------------------


def test_jsonl_split_filter_and_explicit_columns(tmp_path):
    splits = ["test", "train"]
    rows = [dict(row, split=splits[i], title=f"T{i}") for i, row in enumerate(ROWS)]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    assert [e.id for e in load_examples(str(path))] == ["a1"]
    assert [e.id for e in load_examples(str(path), split="train")] == ["a2"]
    custom = load_examples(str(path), split="all", text_column="title", summary_column="article")
    assert [(e.text, e.summary) for e in custom] == [("T0", ROWS[0]["article"]), ("T1", ROWS[1]["article"])]


def test_json_layouts(tmp_path):
    layouts = {
        "list.json": ROWS,
        "hf.json": {"version": "1", "data": ROWS},
        "columns.json": {"id": ["a1", "a2"], "article": [r["article"] for r in ROWS],
                         "summary": [r["summary"] for r in ROWS]},
        "pandas.json": {"id": {"0": "a1", "1": "a2"}, "article": {"0": ROWS[0]["article"], "1": ROWS[1]["article"]},
                        "summary": {"0": ROWS[0]["summary"], "1": ROWS[1]["summary"]}},
    }
    for name, content in layouts.items():
        path = tmp_path / name
        path.write_text(json.dumps(content), encoding="utf-8")
        examples = load_examples(str(path))
        assert [(e.id, e.text, e.summary) for e in examples] == [
            (r["id"], r["article"], r["summary"]) for r in ROWS
        ], name


def test_csv_tsv_with_bom_long_multiline_fields_and_missing_summary(tmp_path):
    long_text = "word " * 40_000 + "\nsecond line, with a comma."
    path = tmp_path / "d.csv"
    path.write_text('\ufeffid,document,highlights\nx1,"' + long_text + '",Ref one.\nx2,Short one.,\n',
                    encoding="utf-8")
    examples = load_examples(str(path))
    assert [e.id for e in examples] == ["x1", "x2"]
    assert examples[0].text == long_text and examples[0].summary == "Ref one."
    assert examples[1].summary is None
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tabstract\nSome text.\tAn abstract.\n", encoding="utf-8")
    assert load_examples(str(tsv)) == [Example("d-0", "Some text.", "An abstract.")]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert [(e.id, e.summary) for e in load_examples(str(path), limit=1)] == [("a1", "First summary.")]


def test_txt_folder_pairs_summaries_and_warns_about_orphans(tmp_path):
    (tmp_path / "b.txt").write_text("Article B.\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("Article A.", encoding="utf-8")
    (tmp_path / "a.summary.txt").write_text("Summary A.\n", encoding="utf-8")
    (tmp_path / "z.summary.txt").write_text("Nobody's summary.", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    with pytest.warns(DataWarning, match="z.summary.txt"):
        examples = load_examples(str(tmp_path))
    assert examples == [Example("a", "Article A.", "Summary A."), Example("b", "Article B.", None)]
    assert load_examples(str(tmp_path / "a.txt")) == [examples[0]]


def test_non_utf8_bytes_are_replaced_with_a_warning_naming_the_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"article": "Caf\xe9 opens. More text.", "summary": "ok"}\n')
    with pytest.warns(DataWarning, match="latin1.jsonl.*not valid UTF-8"):
        examples = load_examples(str(path))
    assert examples[0].text == "Caf\ufffd opens. More text."


@pytest.mark.parametrize(("content", "message"), [
    (bytes(range(256)) * 64, "NUL bytes"),
    (b"\x1f\x8b\x08\x00" + bytes(200), "a gzip file"),
    (b"%PDF-1.7\n" + b"x" * 50, "a PDF file"),
    (bytes((i * 37 + 128) % 128 + 128 for i in range(4000)), "not text"),
])
def test_binary_files_are_refused_not_summarized(tmp_path, content, message):
    path = tmp_path / "article.txt"
    path.write_bytes(content)
    with pytest.raises(SrsumError, match=f"article.txt: .*{message}"):
        read_article(str(path))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "is empty"),
        ("blank.jsonl", b"\n  \n", "is empty"),
        ("empty.csv", b"", "is empty"),
        ("header.csv", b"article,summary\n", "has no rows"),
        ("empty.parquet", b"", "is empty"),
        ("bad.parquet", b"not parquet", "not a readable Parquet file"),
        ("bad.jsonl", b'{"article": "x"}\n{oops\n', "line 2: invalid JSON"),
        ("list.jsonl", b'["x"]\n', "expected a JSON object"),
        ("bad.json", b'{"article": ', "invalid JSON"),
        ("data.xml", b"<a/>", "unsupported file type '.xml'"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SrsumError, match=message) as info:
        load_examples(str(path))
    assert name in _one_line_error(info) or "unsupported" in message


def test_unknown_and_missing_columns_name_the_available_ones(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", ROWS)
    expected = r"text column 'body' not found.*available columns: id, article, summary"
    with pytest.raises(SrsumError, match=expected) as info:
        load_examples(str(path), text_column="body")
    _one_line_error(info)
    with pytest.raises(SrsumError, match=r"summary column 'gold' not found"):
        load_examples(str(path), summary_column="gold")
    odd = _write_jsonl(tmp_path / "odd.jsonl", [{"body": "x", "gold": "y"}])
    with pytest.raises(SrsumError, match=r"no text column found.*available columns: body, gold.*--text-column"):
        load_examples(str(odd))
    no_summary = _write_jsonl(tmp_path / "nosum.jsonl", [{"text": "Just text."}])
    assert load_examples(str(no_summary)) == [Example("nosum-0", "Just text.", None)]


def test_missing_paths_empty_folders_and_bad_limit(tmp_path):
    with pytest.raises(SrsumError, match="not found: .*nope.jsonl"):
        load_examples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(SrsumError, match="not found: data/no/such/thing"):
        load_examples("data/no/such/thing")
    with pytest.raises(SrsumError, match="contains no .txt files"):
        load_examples(str(tmp_path))
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(SrsumError, match="empty.txt is empty"):
        load_examples(str(tmp_path))
    with pytest.raises(SrsumError, match="limit"):
        load_examples(str(tmp_path), limit=0)


# --- Hugging Face Hub ------------------------------------------------------------------------


def test_dataset_specs():
    assert set(DATASETS) == {"cnn_dailymail", "xsum", "arxiv", "mediasum"}
    cnn = DATASETS["cnn_dailymail"]
    assert (cnn.hub_config, cnn.text_column, cnn.summary_column) == ("3.0.0", "article", "highlights")
    assert (DATASETS["xsum"].text_column, DATASETS["xsum"].summary_column) == ("document", "summary")
    assert (DATASETS["arxiv"].text_column, DATASETS["arxiv"].summary_column) == ("article", "abstract")
    assert all(set(spec.splits) == {"train", "validation", "test"} for spec in DATASETS.values())
    with pytest.raises(AttributeError):
        cnn.hub_name = "other"  # frozen


def test_hub_load_uses_spec_config_columns_and_limit(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict(
            {"id": ["h1", "h2", "h3"], "article": ["A one.", "A two.", "A three."], "highlights": ["H1", "H2", "H3"]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    examples = load_examples("cnn_dailymail", split="validation", limit=2)
    assert calls == [("abisee/cnn_dailymail", "3.0.0", "validation")]
    assert examples == [Example("h1", "A one.", "H1"), Example("h2", "A two.", "H2")]
    load_examples("someone/news:v2", split="train")
    assert calls[-1] == ("someone/news", "v2", "train")
    with pytest.raises(SrsumError, match=r"unknown split 'dev'.*train, validation, test"):
        load_examples("xsum", split="dev")


def test_hub_failure_message_points_to_local_files(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'EdinburghNLP/xsum' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SrsumError) as info:
        load_examples("xsum")
    message = _one_line_error(info)
    assert "could not download" in message and "'EdinburghNLP/xsum'" in message
    assert "--dataset path/to/file.jsonl" in message and "Couldn't reach" in message


def test_real_hub_call_in_offline_mode_fails_fast_with_srsum_error(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(SrsumError, match=r"could not download or load dataset 'srsum-test/no-such-dataset'") as info:
        load_examples("srsum-test/no-such-dataset")
    _one_line_error(info)


# --- articles, prefixes, lead-n --------------------------------------------------------------


def test_collect_articles_files_folders_jsonl_and_stdin(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "2.txt").write_text("Two.", encoding="utf-8")
    (folder / "1.txt").write_text("\nOne.\n", encoding="utf-8")
    (folder / "1.summary.txt").write_text("Not an article.", encoding="utf-8")
    single = tmp_path / "story.md"
    single.write_text("A story.", encoding="utf-8")
    jsonl = _write_jsonl(tmp_path / "many.jsonl", [{"id": "j", "document": "From jsonl.", "split": "train"}])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"From stdin.\n"), encoding="utf-8"))
    examples, failures = collect_articles([str(folder), str(single), str(jsonl), "-"])
    assert failures == []
    assert [(e.id, e.text) for e in examples] == [
        ("1", "One."), ("2", "Two."), ("story", "A story."), ("j", "From jsonl."), ("stdin", "From stdin."),
    ]


def test_collect_articles_names_bad_inputs_and_keeps_the_rest(tmp_path):
    (tmp_path / "good.txt").write_text("A good article.")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "one.txt").write_text("First.")
    (tmp_path / "docs" / "two.txt").write_text("Second.")
    (tmp_path / "rows.jsonl").write_text('{"id": "r1", "article": "Row one."}\n{"id": "r2", "article": ""}\n')
    paths = [str(tmp_path / name) for name in ("good.txt", "empty.txt", "missing.txt", "nothing", "docs",
                                                "rows.jsonl")]
    examples, failures = collect_articles(paths)
    assert [e.id for e in examples] == ["good", "one", "two", "r1"]
    messages = [f.message for f in failures]
    assert len(messages) == 4
    assert "empty.txt is empty" in messages[0]
    assert "file not found" in messages[1] and "missing.txt" in messages[1]
    assert "contains no .txt files" in messages[2]
    assert "article 'r2' is empty" in messages[3]
    assert [f.name for f in failures] == [paths[1], paths[2], paths[3], f"{paths[5]}: r2"]
    assert all("\n" not in message for message in messages)  # one line each
    with pytest.raises(SrsumError, match="is a folder"):
        read_article(str(tmp_path))
    with pytest.raises(SrsumError, match="no articles"):
        collect_articles([])


def test_collect_articles_makes_ids_unique(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.txt").write_text("Text.")
    examples, failures = collect_articles([str(tmp_path / "a" / "same.txt"), str(tmp_path / "b" / "same.txt")])
    assert [e.id for e in examples] == ["same", "same-2"] and not failures


def test_source_prefix():
    assert source_prefix("t5") == "summarize: "
    assert source_prefix("srformer_t5") == "summarize: "
    assert source_prefix("T5ForConditionalGeneration") == "summarize: "
    assert source_prefix("bart") == ""
    assert source_prefix("srformer_bart") == ""
    from types import SimpleNamespace

    assert source_prefix(SimpleNamespace(model_type="t5", task_specific_params=None)) == "summarize: "
    tldr = SimpleNamespace(model_type="bart", task_specific_params={"summarization": {"prefix": "TL;DR: "}})
    assert source_prefix(tldr) == "TL;DR: "


def test_lead_n_on_real_article():
    article = load_examples(str(_shared(CNNDM)), limit=1)[0].text
    assert lead_n(article) == (
        "(CNN)A trip to a former heavyweight champ's gaudy, abandoned mansion.\n"
        'The tallest and fastest "giga-coaster" in the world.\n'
        "A dramatic interview with a famed spiritual leader -- and the tearful reaction by one of his former students."
    )
    assert lead_n(article, 1) == lead_n(article).split("\n")[0]
    assert lead_n("Only one sentence here", 3) == "Only one sentence here"
    with pytest.raises(SrsumError, match="n >= 1"):
        lead_n(article, 0)

