"""The quality study: its tasks, its bad-input errors, and a smoke run of the whole pipeline.

The smoke run checks the pipeline end to end (pretrain T5 and BART, convert with calibration, fine-tune,
score teacher-forced and generated, JSON, RESULTS.md, PNG, --from-json), never the scores: its budget
is a few steps.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest
import torch

from srsum.errors import SrsumError
from srsum.quality.model import ModelSize, family_label, new_model, to_variant
from srsum.quality.study import DEFAULT_DATA_DIR, StudyConfig, plan, run_study, smoke_config, validate
from srsum.quality.tasks import (EOS, SEP, EntitiesTask, LookupTask, RecallTask, entity_spans, lcs_f1,
                                 parse_entities, set_f1, words)
from srsum.quality.train import parameter_groups

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("quality_cli", ROOT / "benchmarks" / "quality.py")
quality_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality_cli)

HAVE_DATA = (DEFAULT_DATA_DIR / "xsum" / "xsum-test-sample.jsonl").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"no article data under {DEFAULT_DATA_DIR}")


def engine_available() -> bool:
    try:
        from srsum.engine import convert  # noqa: F401
    except ImportError:
        return False
    return True


def schedule_segment(t: int, n: int, s: int, G: int) -> int:
    """SPEC section 3: the segment decoder position t attends."""
    M = math.ceil(n / s)
    return min(M - 1, t * M // G)


# ---------------------------------------------------------------------------------------- tasks


def test_lookup_answers_need_the_aligned_chunk_and_another_one():
    task = LookupTask()
    source, target, scored = task._example(random.Random(0))
    assert len(source) == task.max_source_len == 256 and len(target) == task.max_target_len == 128
    asked = []
    for t in range(task.n_chunks):
        marker, x_t, other, y_r = target[4 * t : 4 * t + 4]
        assert marker == task.marker0 + t and other != marker
        r = other - task.marker0
        asked.append(r)
        assert source[8 * t] == task.local0 + 10 * t + x_t - task.digit0
        assert source[8 * r + 1] == task.remote0 + 10 * r + y_r - task.digit0
        assert scored[4 * t : 4 * t + 4] == [False, True, False, True]
        for s in (8, 16, 64):  # both digits' decoder positions attend the segment holding chunk t
            for position in (4 * t + 1, 4 * t + 3):
                assert schedule_segment(position, 256, s, 128) == (8 * t) // s
    assert sorted(asked) == list(range(task.n_chunks))  # each chunk's y is asked exactly once


def test_lookup_local_only_ceiling_grows_with_segment_size():
    task = LookupTask()
    assert task.local_only_ceiling(8) == pytest.approx(0.1)
    assert task.local_only_ceiling(8) < task.local_only_ceiling(16) < task.local_only_ceiling(64) < 0.35


def test_recall_lists_every_key_in_order_with_the_value_its_pair_token_holds():
    task = RecallTask()
    source, target, scored = task._example(random.Random(0))
    assert len(source) == task.max_source_len == 256 and len(target) == task.max_target_len == 64
    assert target[0::2] == [task.key0 + i for i in range(32)]
    assert scored == [False, True] * 32
    chunks_of_key = []
    for i in range(32):
        value = target[2 * i + 1] - task.value0
        assert 0 <= value < task.n_values
        pair = task.pair0 + i * task.n_values + value  # "K_i is v": one input token per pair
        assert source.count(pair) == 1
        assert not any(task.pair0 + i * task.n_values <= tok < task.pair0 + (i + 1) * task.n_values
                       for tok in source if tok != pair)  # no other value for that key
        chunks_of_key.append(source.index(pair) // 8)
        chunk = source[8 * chunks_of_key[-1] : 8 * chunks_of_key[-1] + 8]
        assert sum(task.filler0 <= tok < task.pair0 for tok in chunk) == 7
    assert sorted(chunks_of_key) == list(range(32)) and chunks_of_key != list(range(32))  # shuffled
    short, short_target, _ = task._example(random.Random(1), chunks=3)
    assert len(short) == 24 and len(short_target) == 6 and short_target[0::2] == sorted(short_target[0::2])


def test_recall_local_only_ceiling_is_chance_plus_the_keys_in_the_aligned_segment():
    task = RecallTask()
    assert task.local_only_ceiling(8) == pytest.approx(1 / 32 + (31 / 32) / 16)
    assert task.local_only_ceiling(8) < task.local_only_ceiling(16) < task.local_only_ceiling(64) < 0.3


def test_entity_spans_skip_sentence_initial_words():
    tokens = words('Mike Tyson lived in Southington, Ohio. The Fury 325 is "Big" and I like it.')
    found = [" ".join(tokens[a:b]) for a, b in entity_spans(tokens)]
    assert found == ["Tyson", "Southington", "Ohio", "Fury"]


def test_entity_parsing_and_scores():
    assert parse_entities([5, 6, SEP, 7, SEP, 5, 6, SEP, EOS, 9]) == [(5, 6), (7,)]
    assert set_f1([(1,), (2,)], [(2,), (1,)]) == 1.0
    assert lcs_f1([(1,), (2,)], [(2,), (1,)]) == pytest.approx(0.5)
    assert set_f1([], [(1,)]) == 0.0 and set_f1([], []) == 1.0


@needs_data
def test_entities_split_by_article_and_targets_fit():
    task = EntitiesTask(DEFAULT_DATA_DIR)
    assert not set(task.train_ids) & set(task.eval_ids)
    assert not {ex["article"] for ex in task.eval_examples()} & set(task.train_ids)
    for ex in task.eval_examples()[:50]:
        assert len(ex["source"]) <= 256 and len(ex["target"]) <= task.max_target_len
        kept = task.parse(ex["target"])
        assert ex["target"][-1] == EOS and kept == ex["entities"][: len(kept)]


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("change, message", [
    ({"tasks": ("summaries",)}, "unknown task"),
    ({"variants": ("full", "linear")}, "unknown variant"),
    ({"ablations": ("no_leak",)}, "unknown variant"),
    ({"seg_sizes": (8, 512)}, "segment size 512"),
    ({"ablation_seg_size": 300}, "segment size 300"),
    ({"finetune_steps": -1}, "fine-tune steps must be at least 0"),
    ({"transfer_steps": 0}, "transfer steps and transfer batches must be at least 1"),
    ({"transfer_lr": -0.1}, "transfer learning rate must be positive"),
    ({"pretrain_steps": 0}, "pretrain steps must be at least 1"),
    ({"seeds": 0}, "seeds must be at least 1"),
    ({"first_seed": -1}, "first seed must be at least 0"),
    ({"threshold_init": 0.0}, "threshold init must be positive"),
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"families": ("gpt2",)}, "unknown model family"),
    ({"families": ()}, "no model family"),
    ({"memory_ratio": 0.0}, "memory ratio must be positive"),
    ({"new_param_lr_scale": -1.0}, "new-parameter lr scale must be positive"),
])
def test_bad_input_is_rejected_before_training(change, message):
    config = smoke_config(tasks=("lookup",))
    config = type(config)(**{**config.__dict__, **change})
    with pytest.raises(SrsumError, match=message):
        validate(config, workers=1)


def test_cli_reports_bad_input_on_one_line(tmp_path, capsys):
    code = quality_cli.main(["--smoke", "--tasks", "lookup", "--seg-sizes", "8,1024", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: segment size 1024") and err.count("\n") == 1
    assert not (tmp_path / "results.json").exists()


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(SrsumError, match="missing data file"):
        validate(smoke_config(tasks=("entities",), data_dir=str(tmp_path)), workers=1)


def test_full_sweep_plan_has_every_variant_seed_and_ablation():
    pretrains, followers = plan(StudyConfig())
    assert len(pretrains) == 2  # one pretrained model per task (lookup, recall), fine-tuned with 3 seeds
    jobs = [j for v in followers.values() for j in v]
    # full, 5 variants (segmented, srformer, srformer+transfer, xl, global) x 3 sizes, paper init + ablations I-IV
    assert len(jobs) == 2 * 3 * (1 + 5 * 3 + 5)
    assert len(plan(StudyConfig(pretrain_per_seed=True))[0]) == 6
    assert {(j.variant, j.seg_size) for j in jobs if j.variant in ("no_local", "no_raf", "srformer_paper")} == {
        ("no_local", 16), ("no_raf", 16), ("srformer_paper", 16)}
    both = plan(StudyConfig(families=("t5", "bart")))
    assert {(j.family, j.task) for j in both[0]} == {(f, t) for f in ("t5", "bart") for t in ("lookup", "recall")}
    assert all(j.family == root.family for root, follow in both[1].items() for j in follow)


def test_first_seed_adds_seeds_to_a_sweep():
    jobs = [j for v in plan(StudyConfig(seeds=1, first_seed=2))[1].values() for j in v]
    assert {j.seed for j in jobs} == {2}
    assert {j.seed for v in plan(StudyConfig(seeds=2, first_seed=1))[1].values() for j in v} == {1, 2}


def test_a_non_default_model_size_is_its_own_section_and_checkpoint(tmp_path):
    """--num-heads 2: the runs carry the model tag, are reported under "BART (2 heads)", and the pretrained
    checkpoint of one size is never loaded into another (BART's projections have the same shape)."""
    from srsum.quality.report import family_of
    from srsum.quality.study import Job, checkpoint_path

    config = quality_cli.config_from(quality_cli.parse_args(["--output-dir", str(tmp_path), "--smoke",
                                                             "--families", "bart", "--num-heads", "1"]))
    assert config.size.num_heads == 1 and config.model_tag == "1-heads"
    root = Job("lookup", 0, family="bart")
    assert checkpoint_path("w", root, config.model_tag) != checkpoint_path("w", root)
    record = {"family": "bart", "model_tag": "2-heads", "encoder_frozen": True}
    assert family_of(record) == "bart+2-heads+frozen-encoder"
    assert family_label(family_of(record)) == "BART (2 heads), encoder frozen in fine-tuning"
    off = quality_cli.config_from(quality_cli.parse_args(["--output-dir", str(tmp_path), "--clamp", "off"]))
    assert off.clamp is None and off.conversion_tag == "clamp-off"
    assert quality_cli.config_from(quality_cli.parse_args(["--output-dir", str(tmp_path)])).clamp == "default"
    tagged = {"family": "bart", "conversion_tag": "clamp-off", "encoder_frozen": True}
    assert family_label(family_of(tagged)) == "BART (clamp off), encoder frozen in fine-tuning"
    from srsum.quality.report import pretrained_family

    results = {"runs": [{"family": "bart", "task": "lookup", "variant": "pretrained"},
                        {"family": "bart", "model_tag": "2-heads", "task": "lookup", "variant": "pretrained"}]}
    assert pretrained_family(results, "bart+clamp-off+frozen-encoder", "lookup") == "bart"
    assert pretrained_family(results, "bart+2-heads+frozen-encoder", "lookup") == "bart+2-heads"
    with pytest.raises(SrsumError, match="'off' or a positive number"):
        quality_cli.config_from(quality_cli.parse_args(["--output-dir", str(tmp_path), "--clamp", "-1"]))
    with pytest.raises(SrsumError, match="must divide d_model"):
        quality_cli.config_from(quality_cli.parse_args(["--output-dir", str(tmp_path), "--smoke", "--num-heads", "3"]))


def test_new_parameters_get_their_own_learning_rate():
    task = RecallTask()
    model = new_model("t5", task.vocab_size, ModelSize(d_model=32, d_kv=8, d_ff=64, num_heads=2))
    plain = parameter_groups(model, 1e-3, 10.0)
    assert len(plain) == 1  # nothing new before conversion
    model = to_variant(model, "srformer", 16, task.max_target_len)
    old, new = parameter_groups(model, 1e-3, 10.0)
    assert old["lr"] == 1e-3 and new["lr"] == pytest.approx(1e-2)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].rsplit(".", 1)[-1] if "raf_" in names[id(p)] else "W" for p in new["params"]} == {
        "raf_leak", "raf_threshold", "W"}
    assert len(new["params"]) == 3 * model.config.num_decoder_layers


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_srsum_decoder_fed_the_gold_prefix_gives_the_teacher_forced_logits(family):
    """What generated scoring rests on: srsum's decoder, step by step, equals the model's forward pass."""
    from srsum.decoding import SharedStateDecoder

    task = RecallTask(eval_size=2)
    torch.manual_seed(0)
    model = new_model(family, task.vocab_size, ModelSize(d_model=32, d_kv=8, d_ff=64, num_heads=2))
    batch = next(task.eval_batches(2))
    model = to_variant(model, "srformer", 16, task.max_target_len, calibration_batch=batch).eval()
    with torch.no_grad():
        forward = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        decoder_input_ids=batch.decoder_input_ids).logits
        steps = 24  # 12 keys and values: positions that attend the first 6 of 16 segments
        decoder = SharedStateDecoder(model, batch.input_ids, batch.attention_mask, rows_per_example=1,
                                     max_steps=steps, step="eager")
        stepped = torch.stack([decoder.logits(batch.decoder_input_ids[:, t : t + 1]) for t in range(steps)], 1)
    assert torch.allclose(stepped, forward[:, :steps], atol=1e-4)


# --------------------------------------------------------------------------------------- smoke


def identity_converter(model, attention, seg_size, schedule_length, **settings):
    """Stands in for srsum.engine.convert where the engine is absent: the pipeline, not the attention."""
    return model


def test_pipeline_end_to_end_with_stub_conversion(tmp_path):
    config = smoke_config(families=("t5",), tasks=("lookup",))
    results = run_study(config, converter=identity_converter, progress=lambda line: None)
    runs = results["runs"]
    assert not [r for r in runs if "error" in r]
    # pretrain, full, segmented + srformer at s=16, srformer_paper, no_raf
    assert len(runs) == 1 + 1 + 2 + 2
    assert all(0.0 <= r["score"] <= 1.0 for r in runs)


@pytest.mark.skipif(not engine_available(), reason="srsum.engine not importable yet")
def test_smoke_cli_runs_the_real_conversion_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    assert quality_cli.main(["--smoke", "--workers", "2", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert {r["variant"] for r in runs} == {"pretrained", "full", "segmented", "srformer", "srformer_paper",
                                            "no_raf"}
    assert {(r["family"], r["task"]) for r in runs} == {(f, t) for f in ("t5", "bart") for t in ("lookup", "recall")}
    assert not [r for r in runs if "error" in r]
    srformer = [r for r in runs if r["variant"] == "srformer"]
    full = [r for r in runs if r["variant"] == "full"]
    paper = [r for r in runs if r["variant"] == "srformer_paper"]
    assert srformer[0]["parameters"] > full[0]["parameters"]  # W, leak and threshold were added
    for r in srformer:  # calibrated on the first fine-tuning batch; the memory measured after fine-tuning
        assert [row["ratio"] for row in r["calibration"]] == pytest.approx([0.05, 0.05], rel=1e-3)
        assert len(r["memory_after"]) == 2 and all(row["firing_rate"] is not None for row in r["memory_after"])
    assert all(r["calibration"] is None and r["memory_after"] for r in paper)  # the paper's W, not calibrated
    assert all(r["memory_after"] is None for r in full)
    assert all(0.0 <= r["generated_score"] <= 1.0 for r in runs if r["kind"] == "finetune")
    page = (out / "RESULTS.md").read_text()
    assert "like the paper's Fig. 4" in page and "Share of the full-vs-segmented gap" in page and "Table 3" in page
    assert "Task `recall`, BART" in page and "Task `lookup`, T5" in page and "SRformer, paper init" in page
    assert "Generated score" in page and "Is the memory alive?" in page
    assert (out / "quality_vs_segment_size.png").stat().st_size > 1000

    page = page.replace("_No interpretation written yet", "My reading")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "RESULTS.md").write_text(page)
    assert quality_cli.main(["--from-json", str(out / "results.json"), "--output-dir", str(tmp_path / "docs")]) == 0
    assert "My reading" in (tmp_path / "docs" / "RESULTS.md").read_text()


@pytest.mark.skipif(not engine_available(), reason="srsum.engine not importable yet")
def test_frozen_encoder_fine_tuning_keeps_the_encoder_and_reports_a_section_of_its_own(tmp_path):
    """--freeze-encoder: the fine-tuned model's encoder (shared embedding included) equals the pretrained one,
    its decoder does not; the runs are marked and reported under a family section of their own, and the
    report shows no section for a (family, task) without fine-tunings."""
    from srsum.quality.report import document, sections_of
    from srsum.quality.study import Job, checkpoint_path, run_finetune, run_pretrain

    config = smoke_config(families=("bart",), tasks=("lookup",), freeze_encoder=True, ablations=())
    work = str(tmp_path)
    root = Job("lookup", 0, family="bart")
    pretrain = run_pretrain(root, config, work)
    seen = {}

    def keep(model, attention, seg_size, schedule_length, **settings):  # the real conversion, then look
        from srsum.engine import convert

        seen["model"] = convert(model, attention, seg_size=seg_size, schedule_length=schedule_length, **settings)
        return seen["model"]

    record = run_finetune(Job("lookup", 0, "srformer", 16, "bart"), config, work, converter=keep)
    assert record["encoder_frozen"] is True and "error" not in record
    pretrained = torch.load(checkpoint_path(work, root), weights_only=True)
    tuned = seen["model"].state_dict()
    encoder_keys = [k for k in pretrained if k.startswith("model.encoder.") or k == "model.shared.weight"]
    decoder_keys = [k for k in pretrained if k.startswith("model.decoder.layers.")]
    assert encoder_keys and all(torch.equal(pretrained[k], tuned[k].cpu()) for k in encoder_keys)
    assert any(not torch.equal(pretrained[k], tuned[k].cpu()) for k in decoder_keys)

    results = {"meta": {"command": "test", "wall_seconds": 1.0, "workers": 1, "device": "cpu"},
               "config": config.as_dict(), "tasks": {"lookup": {"n": 256, "G": 128, "metric": "step accuracy"},
                                                     "recall": {"n": 256, "G": 64, "metric": "value accuracy"}},
               "runs": [pretrain, record]}
    assert sections_of(results) == [("bart+frozen-encoder", "lookup")]
    page = document(results, "notes")
    assert "Task `lookup`, BART, encoder frozen in fine-tuning" in page
    assert "## Task `recall`" not in page and "## Task `lookup`, BART:" not in page


def test_not_fine_tuned_and_transfer_rows_have_sections_of_their_own(tmp_path):
    """--finetune-steps 0: scored right after conversion (and transfer), reported as "(not fine tuned)"; the
    '+transfer' variants record the transfer's per-layer errors, shown in the report's transfer table."""
    out = tmp_path / "out"
    assert quality_cli.main(["--smoke", "--families", "t5", "--tasks", "lookup", "--variants",
                             "full,segmented,srformer,srformer+transfer", "--ablations", "no_raf+transfer",
                             "--finetune-steps", "0", "--transfer-steps", "2", "--transfer-batches", "1",
                             "--output-dir", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    tuned = [r for r in runs if r["kind"] == "finetune"]
    assert {r["variant"] for r in tuned} == {"full", "segmented", "srformer", "srformer+transfer", "no_raf+transfer"}
    assert all(r["steps"] == 0 and r["conversion_tag"] == "not-fine-tuned" for r in tuned)
    moved = [r for r in tuned if r["variant"].endswith("+transfer")]
    assert all(r["transfer_steps"] == 2 and len(r["transfer_layers"]) == 2 for r in moved)
    assert all("transfer_layers" not in r for r in tuned if not r["variant"].endswith("+transfer"))
    page = (out / "RESULTS.md").read_text()
    assert "Task `lookup`, T5 (not fine tuned)" in page and "### Attention transfer" in page
    assert "| SRformer + transfer |" in page and "III: no RAF neuron + transfer" in page
