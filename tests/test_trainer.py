"""Fine-tuning an SRformer model with Hugging Face's ``Seq2SeqTrainer`` (issue 30 item 3): a tiny T5 with the
real T5 tokenizer, converted by ``srsum.engine.convert``, trains a few steps on CNN/DailyMail rows, and its
evaluation and prediction with ``predict_with_generate`` run srsum's shared-state decoder (no fallback)."""

import json
import warnings

import pytest
import torch

import srsum.decoding
from srsum.engine import convert

from conftest import CNN_SAMPLE, TOKENIZER_DIRS, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

ROWS = 4
SOURCE_TOKENS, TARGET_TOKENS = 64, 16


def cnn_rows(tokenizer, count: int = ROWS) -> list[dict]:
    """The first ``count`` CNN/DailyMail rows, tokenized (article -> input_ids, summary -> labels)."""
    rows = []
    with open(CNN_SAMPLE) as lines:
        for line in lines:
            row = json.loads(line)
            source = tokenizer("summarize: " + row["article"], max_length=SOURCE_TOKENS, truncation=True)
            target = tokenizer(text_target=row["summary"], max_length=TARGET_TOKENS, truncation=True)
            rows.append({**source, "labels": target["input_ids"]})
            if len(rows) == count:
                return rows
    return rows


@pytest.fixture
def trainer(shared_data, tmp_path):
    from transformers import (AutoTokenizer, DataCollatorForSeq2Seq, GenerationConfig, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIRS["t5"]))
    model = convert(tiny_model("t5", vocab_size=len(tokenizer)), "srformer", seg_size=16, schedule_length=8)
    model.generation_config = GenerationConfig.from_model_config(model.config)
    rows = cnn_rows(tokenizer)
    arguments = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, per_device_eval_batch_size=2,
        max_steps=2, learning_rate=1e-3, predict_with_generate=True, generation_max_length=8,
        generation_num_beams=2, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True)
    return Seq2SeqTrainer(model=model, args=arguments, train_dataset=rows, eval_dataset=rows,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                          processing_class=tokenizer, compute_metrics=summary_rows)


def summary_rows(prediction) -> dict:
    """A stand-in for ROUGE: with compute_metrics the Trainer generates during evaluate(), as users run it."""
    return {"summaries": len(prediction.predictions)}


@pytest.fixture
def searches(monkeypatch):
    """Every run of srsum's decoder: (batch rows, beams) per ``srsum.decoding.search`` call."""
    calls = []
    real = srsum.decoding.search

    def watched(model, input_ids, attention_mask, settings, *args, **kwargs):
        calls.append((input_ids.shape[0], settings.num_beams))
        return real(model, input_ids, attention_mask, settings, *args, **kwargs)

    monkeypatch.setattr("srsum.generate_dropin.search", watched)
    return calls


def test_seq2seq_trainer_trains_and_evaluates_through_srsums_decoder(trainer, searches):
    model = trainer.model
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = trainer.train()
        metrics = trainer.evaluate()
        predicted = trainer.predict(trainer.eval_dataset)
    assert not [str(w.message) for w in caught if "srsum's shared-state decoder" in str(w.message)]
    assert trained.global_step == 2 and torch.isfinite(torch.tensor(trained.training_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the weights moved
    assert torch.isfinite(torch.tensor(metrics["eval_loss"])) and metrics["eval_summaries"] == ROWS
    # evaluate and predict generated every batch of 2 with srsum's decoder, 2 beams as the arguments ask
    assert searches == [(2, 2)] * (2 * ROWS // 2)
    tokens = torch.as_tensor(predicted.predictions)
    assert tokens.shape[0] == ROWS and bool((tokens[:, 8:] == model.config.pad_token_id).all())  # max length 8
