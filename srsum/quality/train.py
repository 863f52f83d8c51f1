"""Training (AdamW, linear warm-up and decay) and scoring, the same for every variant."""

from __future__ import annotations

import math
import time

import torch

from srsum.quality.tasks import IGNORE, lcs_f1, mean, set_f1


def linear_schedule(optimizer, steps: int, warmup_fraction: float = 0.05):
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


NEW_PARAMETER_MARKS = ("recurrent_w", "raf_")  # SRformer's W, λ (raf_leak) and θ (raf_threshold)


def is_new_parameter(name: str) -> bool:
    return any(mark in name for mark in NEW_PARAMETER_MARKS)


def parameter_groups(model, lr: float, new_param_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: the pretrained weights at ``lr``; SRformer's new W, λ, θ at ``lr * new_param_lr_scale``
    in a group of their own (left out when the model has none)."""
    old, new = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (new if is_new_parameter(name) else old).append(param)
    groups = [{"params": old, "lr": lr}]
    if new:
        groups.append({"params": new, "lr": lr * new_param_lr_scale})
    return groups


def train(model, task, *, steps: int, batch_size: int, lr: float, seed: int, device: str,
          ramp_steps: int = 0, every: int = 0, callback=None, new_param_lr_scale: float = 1.0) -> dict:
    """Train ``model`` on ``task`` for ``steps`` batches; returns the loss curve's summary."""
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, lr, new_param_lr_scale), lr=lr, weight_decay=0.01)
    schedule = linear_schedule(optimizer, steps)
    batches = task.train_batches(seed, batch_size, ramp_steps)
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        batch = next(batches).to(device)
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     decoder_input_ids=batch.decoder_input_ids, labels=batch.labels).loss
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss became {loss.item()}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if callback is not None and every and (len(losses) % every == 0):
            callback(len(losses), mean(losses[-every:]))
            model.train()
    tail = losses[-max(1, steps // 10):]
    return {"steps": steps, "first_loss": losses[0], "final_loss": mean(tail),
            "train_seconds": time.perf_counter() - start}


class Tally:
    """Right predictions at the scored positions over batches: token accuracy, and for a task with steps
    (lookup) the local, remote and whole-step accuracies."""

    def __init__(self, task):
        self.task, self.right, self.total = task, 0, 0
        self.steps = {"local": 0, "remote": 0, "steps": 0, "count": 0}

    def add(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        """predicted, labels (B, T); labels IGNORE where not scored."""
        scored = labels != IGNORE
        hits = predicted == labels
        self.right += hits[scored].sum().item()
        self.total += scored.sum().item()
        if hasattr(self.task, "step_scores"):
            for key, value in self.task.step_scores(hits.cpu(), scored.cpu()).items():
                self.steps[key] += value

    def summary(self) -> dict:
        out = {"token_accuracy": self.right / max(1, self.total)}
        if self.steps["count"]:
            out.update({name: self.steps[key] / self.steps["count"] for name, key in
                        (("local_accuracy", "local"), ("remote_accuracy", "remote"), ("step_accuracy", "steps"))})
        return out


@torch.no_grad()
def teacher_forced(model, task, *, batch_size: int, device: str, limit: int | None = None) -> dict:
    """Argmax predictions given the gold prefix, scored by :class:`Tally`."""
    model.to(device).eval()
    tally = Tally(task)
    for batch in task.eval_batches(batch_size, limit):
        batch = batch.to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       decoder_input_ids=batch.decoder_input_ids).logits
        tally.add(logits.argmax(-1), batch.labels)
    return tally.summary()


@torch.no_grad()
def generate_entities(model, task, *, batch_size: int, device: str, limit: int | None = None) -> dict:
    """Greedy-decode every evaluation window and score its entity list against the gold one."""
    model.to(device).eval()
    examples = task.eval_examples(limit)
    set_scores, order_scores = [], []
    for i, batch in enumerate(task.eval_batches(batch_size, limit)):
        batch = batch.to(device)
        out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             max_new_tokens=task.max_target_len, do_sample=False, num_beams=1)
        for row, ids in enumerate(out.tolist()):
            predicted = task.parse(ids[1:])  # ids[0] is the start token
            gold = task.parse(examples[i * batch_size + row]["target"])  # the entities that fit in G
            set_scores.append(set_f1(predicted, gold))
            order_scores.append(lcs_f1(predicted, gold))
    return {"entity_f1": mean(set_scores), "order_f1": mean(order_scores)}


def has_srsum_layers(model) -> bool:
    """Whether srsum's decoder can run the model (its cross-attention was converted, even to "full")."""
    try:
        from srsum.engine.layer import SRformerCrossAttention
    except ImportError:
        return False
    return any(isinstance(m, SRformerCrossAttention) for m in model.modules())


@torch.no_grad()
def generated(model, task, *, batch_size: int, device: str, limit: int | None = None) -> dict:
    """Greedy decoding through srsum's own decoder (``SharedStateDecoder``, one step at a time), scored
    at the scored positions exactly like :func:`teacher_forced`. What the decoder is fed at step t + 1:
    with ``task.generation == "free"`` always its own argmax of step t; with "forced" (lookup's markers,
    recall's keys) its argmax where step t is scored and the given token where not."""
    from srsum.decoding import SharedStateDecoder

    model.to(device).eval()
    free = getattr(task, "generation", "free") == "free"
    tally = Tally(task)
    for batch in task.eval_batches(batch_size, limit):
        batch = batch.to(device)
        length = batch.labels.shape[1]
        decoder = SharedStateDecoder(model, batch.input_ids, batch.attention_mask, rows_per_example=1,
                                     max_steps=length, step="eager")
        scored = batch.labels != IGNORE
        tokens = batch.decoder_input_ids[:, :1]  # the decoder start token
        predicted = []
        for t in range(length):
            choice = decoder.logits(tokens).argmax(-1)  # (B,)
            predicted.append(choice)
            if t + 1 < length:
                given = batch.decoder_input_ids[:, t + 1]
                tokens = (choice if free else torch.where(scored[:, t], choice, given))[:, None]
        tally.add(torch.stack(predicted, 1), batch.labels)
    scores = tally.summary()
    out = {"generated_token_accuracy": scores["token_accuracy"]}
    if "step_accuracy" in scores:
        out["generated_step_accuracy"] = scores["step_accuracy"]
    out["generated_score"] = out.get("generated_step_accuracy", out["generated_token_accuracy"])
    return out


def evaluate(model, task, *, batch_size: int, device: str, limit: int | None = None,
             generate: bool = True) -> dict:
    """The task's score (its headline number under ``score``, teacher-forced) and secondary metrics;
    with ``generate``, for a model srsum's decoder runs, also ``generated_score`` (see :func:`generated`)."""
    start = time.perf_counter()
    metrics = teacher_forced(model, task, batch_size=batch_size, device=device, limit=limit)
    if task.generative:
        metrics.update(generate_entities(model, task, batch_size=batch_size, device=device, limit=limit))
        metrics["score"] = metrics["entity_f1"]
    else:
        metrics["score"] = metrics.get("step_accuracy", metrics["token_accuracy"])
        if generate and has_srsum_layers(model):
            metrics.update(generated(model, task, batch_size=batch_size, device=device, limit=limit))
    metrics["eval_seconds"] = time.perf_counter() - start
    return metrics
