"""How far bfloat16 and int8 move a trained model from float32 (issue 29): greedy summaries, ROUGE, logits.

    python benchmarks/number_formats.py --model models/run/best --data ../shared/data/cnn_dailymail/cnn_dailymail-test-sample.jsonl
    python benchmarks/number_formats.py --model A --model B --data X.jsonl --data Y.jsonl --limit 50 --json out.json
    python benchmarks/number_formats.py --study /work/qwork/pretrained-bart-recall-seed0.pt --family bart --task recall

For each model and data file, every format in ``--formats`` loads the same checkpoint through
``srsum.summarize.load_summarizer`` (what ``srsum summarize --dtype`` does) and summarizes the same articles
greedily. Against float32 it reports:

* token agreement: per article, the share of float32's summary tokens that the other format reproduces
  before its first different token (the common prefix), averaged; and the share of identical summaries;
* ROUGE-1/2/L/Lsum (``srsum.metrics``, F-measure x 100) and its change from float32, in points;
* the logit error, teacher-forced on the reference summary (its first ``--logit-tokens`` tokens): the mean and
  the largest |logit - float32 logit|, each divided by the standard deviation of float32's logits, and the
  share of positions whose best token is float32's;
* wall seconds of the summarization (one run; the machine line says which CPU, and whether it has AMX,
  AVX512-BF16 and VNNI).

``--study`` takes a pretrained model of the quality study instead (``benchmarks/quality.py``'s work dir:
``pretrained-<family>-<task>-seed<k>.pt``, a small model trained to near 100% on a synthetic task made from
the shared articles), converted with srsum's ``full`` and calibrated ``srformer`` (``--seg-size``) cross-attention
and cast to each format; against float32 it reports the task's teacher-forced and greedy-decoded scores (the
study's, srsum's decoder), and at the positions the task scores the top-1 agreement and the logit error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402


def common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def teacher_forced_logits(summarizer, examples, max_source: int, tokens: int) -> list[torch.Tensor]:
    """Per article, the (tokens, vocab) float32 logits of the reference summary under teacher forcing."""
    from srsum.tokenization import encode_examples

    model, tokenizer = summarizer.model, summarizer.tokenizer
    encoded = encode_examples(tokenizer, model.config, [e.text for e in examples], [e.summary for e in examples],
                              max_source, tokens)
    out = []
    with torch.no_grad():
        for row in encoded:
            ids = torch.tensor([row.input_ids])
            labels = torch.tensor([row.labels])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).logits
            out.append(logits[0].float())
    return out


def measure(model_path: str, data: str, formats: list[str], limit: int, max_source: int, max_length: int,
            logit_tokens: int, batch_size: int) -> list[dict]:
    from srsum.data import load_examples
    from srsum.metrics import rouge_scores
    from srsum.summarize import SummarizeSettings, load_summarizer, summarize_examples

    examples = [e for e in load_examples(data, split="all", limit=limit) if e.summary]
    settings = SummarizeSettings(num_beams=1, max_length=max_length, min_length=0, no_repeat_ngram_size=0,
                                 length_penalty=1.0, batch_size=batch_size, max_source_length=max_source)
    rows, reference = [], None
    for name in formats:
        summarizer = load_summarizer(model_path, device="cpu", dtype=name)
        start = time.perf_counter()
        summaries = summarize_examples(summarizer, examples, settings, warn_each=False)
        seconds = time.perf_counter() - start
        tokens = [summarizer.tokenizer(s, add_special_tokens=False).input_ids for s in summaries]
        logits = teacher_forced_logits(summarizer, examples, max_source, logit_tokens)
        rouge = {k: round(v, 2) for k, v in rouge_scores(summaries, [e.summary for e in examples]).items()}  # in %
        row = dict(model=model_path, data=Path(data).name, format=summarizer.number_format, articles=len(examples),
                   seconds=round(seconds, 2), rouge=rouge)
        if reference is None:
            reference = dict(tokens=tokens, logits=logits, rouge=rouge)
        else:
            prefix = [common_prefix(a, b) / max(len(a), 1) for a, b in zip(reference["tokens"], tokens)]
            row["prefix_agreement"] = round(sum(prefix) / len(prefix), 4)
            row["identical"] = round(sum(a == b for a, b in zip(reference["tokens"], tokens)) / len(tokens), 4)
            row["rouge_change"] = {k: round(rouge[k] - reference["rouge"][k], 2) for k in rouge}
            errors = [((x - r).abs() / r.std(), (x.argmax(-1) == r.argmax(-1)).float())
                      for x, r in zip(logits, reference["logits"])]
            row["logit_error_mean"] = round(float(torch.cat([e.flatten() for e, _ in errors]).mean()), 4)
            row["logit_error_max"] = round(float(max(e.max() for e, _ in errors)), 4)
            row["top1_agreement"] = round(float(torch.cat([a for _, a in errors]).mean()), 4)
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
    return rows


def measure_study(path: str, family: str, task_name: str, formats: list[str], seg_size: int,
                  limit: int | None) -> list[dict]:
    """The study's pretrained model in each format, for srsum's ``full`` and ``srformer`` conversions."""
    import copy

    from srsum.precision import cast_model
    from srsum.quality.model import ModelSize, new_model, to_variant
    from srsum.quality.tasks import build_task
    from srsum.quality.train import evaluate

    task = build_task(task_name, str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    plain = new_model(family, task.vocab_size, ModelSize(), task.max_source_len)
    plain.load_state_dict(torch.load(path, weights_only=True))
    calibration = next(task.train_batches(2_000, 8))
    rows = []
    for variant in ("full", "srformer"):
        torch.manual_seed(2_000)
        converted = to_variant(copy.deepcopy(plain), variant, seg_size, task.max_target_len,
                               calibration_batch=calibration).eval()
        reference = None
        for name in formats:
            model = cast_model(copy.deepcopy(converted), name)
            with torch.no_grad():
                scores = evaluate(model, task, batch_size=64, device="cpu", limit=limit)
                logits, scored = _study_outputs(model, task, limit)
            row = dict(model=Path(path).name, variant=variant if variant == "full" else f"srformer s={seg_size}",
                       format=name, score=round(scores["score"], 4), generated=round(scores["generated_score"], 4))
            if reference is None:
                reference = (None, logits)
            else:
                same_top1 = logits.argmax(-1) == reference[1].argmax(-1)
                row["top1_agreement"] = round(float(same_top1[scored].float().mean()), 4)
                error = (logits - reference[1])[scored].abs() / reference[1][scored].std()
                row["logit_error_mean"], row["logit_error_max"] = round(float(error.mean()), 4), round(float(error.max()), 4)
            rows.append(row)
            print("  " + json.dumps(row), flush=True)
    return rows


def _study_outputs(model, task, limit):
    """Teacher-forced float32 logits and where the task scores them (its answers; the other positions are text
    the task does not grade), over the eval set."""
    from srsum.quality.tasks import IGNORE

    logits, scored = [], []
    for batch in task.eval_batches(64, limit):
        scored.append(batch.labels != IGNORE)
        logits.append(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            decoder_input_ids=batch.decoder_input_ids).logits.float())
    return torch.cat(logits), torch.cat(scored)


def study_report(rows: list[dict]) -> str:
    headers = ["model", "variant", "format", "score (teacher forced)", "score (greedy, srsum decoder)",
               "top-1 = float32's (scored)", "logit err mean/σ", "logit err max/σ"]
    return markdown_table(headers, [[r["model"], r["variant"], r["format"], r["score"], r["generated"],
                                     r.get("top1_agreement", "-"),
                                     r.get("logit_error_mean", "-"), r.get("logit_error_max", "-")] for r in rows])


def report(rows: list[dict]) -> str:
    table = []
    for row in rows:
        change = row.get("rouge_change")
        table.append([Path(row["model"]).parent.name or row["model"], row["data"], row["format"], row["articles"],
                      "/".join(f"{row['rouge'][k]:.2f}" for k in ("rouge1", "rouge2", "rougeLsum")),
                      "-" if change is None else "/".join(f"{change[k]:+.2f}" for k in ("rouge1", "rouge2", "rougeLsum")),
                      row.get("prefix_agreement", "-"), row.get("identical", "-"), row.get("top1_agreement", "-"),
                      row.get("logit_error_mean", "-"), row.get("logit_error_max", "-"), row["seconds"]])
    headers = ["model", "data", "format", "articles", "R1/R2/RLsum", "change (points)", "prefix agreement",
               "identical", "top-1 (teacher forced)", "logit err mean/σ", "logit err max/σ", "s"]
    return markdown_table(headers, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="a trained checkpoint (repeatable)")
    parser.add_argument("--data", action="append", help="a JSONL with references (repeatable)")
    parser.add_argument("--study", help="a pretrained model of the quality study (.pt) instead of --model/--data")
    parser.add_argument("--family", default="bart", help="--study: t5 or bart")
    parser.add_argument("--task", default="recall", help="--study: the study's task (lookup, recall)")
    parser.add_argument("--seg-size", type=int, default=16, help="--study: the srformer conversion's segment size")
    parser.add_argument("--formats", default="float32,bfloat16,int8", help="float32 first: the reference")
    parser.add_argument("--limit", type=int, default=100, help="articles per data file")
    parser.add_argument("--max-source-length", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=64, help="summary tokens at most (greedy)")
    parser.add_argument("--logit-tokens", type=int, default=32, help="reference tokens teacher-forced")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write every figure here, with the command line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    formats = args.formats.split(",")
    if formats[0] != "float32":
        parser.error("--formats must start with float32 (the reference)")
    command = "python benchmarks/number_formats.py " + " ".join(sys.argv[1:])
    print(f"machine: {machine()}\ncommand: {command}\n", flush=True)
    if args.study:
        rows = measure_study(args.study, args.family, args.task, formats, args.seg_size, args.limit)
        print("\n" + study_report(rows))
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "command": command, "rows": rows}, indent=1) + "\n")
        return
    if not args.model or not args.data:
        parser.error("give --model and --data (or --study)")
    rows = [row for model in args.model for data in args.data
            for row in measure(model, data, formats, args.limit, args.max_source_length, args.max_length,
                               args.logit_tokens, args.batch_size)]
    print("\n" + report(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "command": command, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
