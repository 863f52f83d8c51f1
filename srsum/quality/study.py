"""The sweep: pretrain a full-attention T5 (or BART) per family, task and seed, convert it to every variant, fine-tune
each for the same budget, score it on held-out examples, and collect everything in one results dict.

Every bad input is rejected by :func:`validate` before any training starts.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from srsum.errors import SrsumError
from srsum.quality.model import (ALL_VARIANTS, DEFAULT_ABLATIONS, FAMILIES, MAIN_VARIANTS, ModelSize,
                                 count_parameters, engine_convert, freeze_encoder, new_model, split_transfer,
                                 to_variant)
from srsum.quality.tasks import DEFAULT_TASKS, TASK_NAMES, build_task
from srsum.quality.train import evaluate, train

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class StudyConfig:
    """Everything that decides a sweep's numbers. The same steps, batch and schedule for every variant."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    variants: tuple[str, ...] = MAIN_VARIANTS
    seg_sizes: tuple[int, ...] = (8, 16, 64)
    ablations: tuple[str, ...] = DEFAULT_ABLATIONS  # srformer_paper and ablations I-IV
    ablation_seg_size: int = 16
    seeds: int = 3
    first_seed: int = 0                  # seeds first_seed .. first_seed + seeds - 1 (add seeds to a sweep)
    pretrain_per_seed: bool = False
    pretrain_steps: int | None = None  # None: each task's own default (tasks.py), enough to learn it
    pretrain_batch_size: int = 16
    finetune_steps: int = 300
    batch_size: int = 8             # fine-tuning batch, the same for every variant
    pretrain_lr: float = 2e-3
    ramp_fraction: float = 0.5
    finetune_lr: float = 1e-3
    threshold_init: float | None = None  # None: the SPEC's θ = 0.1
    leak_init: float | None = None       # None: the family's λ (T5 0.1, BART 0.5)
    clamp: float | str | None = "default"  # the products' clamp: the family's default (BART ±2), None (off) or a bound
    memory_ratio: float | None = None    # None: the engine's default ||rec|| / ||local|| after calibration
    new_param_lr_scale: float = 1.0      # W, λ, θ train at finetune_lr times this
    # "<variant>+transfer": attention transfer (srsum.engine.transfer) after conversion, before fine-tuning
    transfer_steps: int = 300
    transfer_lr: float | None = None     # None: the engine's default
    transfer_batches: int = 16           # training batches the transfer cycles over (batch_size each)
    freeze_encoder: bool = False         # fine-tune with the encoder frozen (its output = the pretrained one's)
    families: tuple[str, ...] = ("t5",)  # "t5" and/or "bart"
    eval_batch_size: int = 64
    eval_limit: int | None = None
    size: ModelSize = field(default_factory=ModelSize)
    # names a model size other than the study's default, e.g. "2-heads": kept in every run's record (the
    # report gives it a section of its own) and in the pretrained checkpoints' names (never reused across sizes)
    model_tag: str = ""
    # names a conversion other than the default, e.g. "clamp-off": in every fine-tuning's record (a report
    # section of its own), not in the checkpoints' names (the pretrained model is the same)
    conversion_tag: str = ""
    data_dir: str = str(DEFAULT_DATA_DIR)
    device: str = "cpu"

    def as_dict(self) -> dict:
        out = asdict(self)
        out["size"] = self.size.as_dict()
        return out


def smoke_config(**overrides) -> StudyConfig:
    """A tiny budget that checks the pipeline end to end (not the scores) in well under a minute."""
    base = StudyConfig(variants=("full", "segmented", "srformer"), seg_sizes=(16,),
                       ablations=("srformer_paper", "no_raf"), families=("t5", "bart"),
                       ablation_seg_size=16, seeds=1, pretrain_steps=3, pretrain_batch_size=4,
                       finetune_steps=2, batch_size=4,
                       eval_limit=8, eval_batch_size=8,
                       size=ModelSize(d_model=32, d_kv=8, d_ff=64, num_heads=2))
    return replace(base, **overrides)


@dataclass(frozen=True)
class Job:
    """One unit of work: a pretraining (variant None) or one variant's fine-tuning and scoring."""

    task: str
    seed: int
    variant: str | None = None
    seg_size: int | None = None
    family: str = "t5"

    @property
    def label(self) -> str:
        if self.variant is None:
            return f"{self.family} {self.task} seed {self.seed} pretrain (full attention)"
        s = "" if self.seg_size is None else f" s={self.seg_size}"
        return f"{self.family} {self.task} seed {self.seed} {self.variant}{s}"


# --------------------------------------------------------------------------------------------------
# validation and planning
# --------------------------------------------------------------------------------------------------


def validate(config: StudyConfig, workers: int) -> dict:
    """Reject bad input with one-line SrsumErrors; returns the built tasks' descriptions."""
    for name in config.tasks:
        if name not in TASK_NAMES:
            raise SrsumError(f"unknown task {name!r}: choose from {', '.join(TASK_NAMES)}")
    if not config.tasks:
        raise SrsumError("no task chosen: choose from " + ", ".join(TASK_NAMES))
    for name in config.families:
        if name not in FAMILIES:
            raise SrsumError(f"unknown model family {name!r}: choose from {', '.join(FAMILIES)}")
    if not config.families:
        raise SrsumError("no model family chosen: choose from " + ", ".join(FAMILIES))
    if config.memory_ratio is not None and not config.memory_ratio > 0:
        raise SrsumError(f"memory ratio must be positive, got {config.memory_ratio}")
    if not config.new_param_lr_scale > 0:
        raise SrsumError(f"new-parameter lr scale must be positive, got {config.new_param_lr_scale}")
    for name in (*config.variants, *config.ablations):
        if name not in ALL_VARIANTS:
            raise SrsumError(f"unknown variant {name!r}: choose from {', '.join(ALL_VARIANTS)}")
    if config.pretrain_steps is not None and config.pretrain_steps < 1:
        raise SrsumError(f"pretrain steps must be at least 1, got {config.pretrain_steps}")
    if config.finetune_steps < 0:
        raise SrsumError(f"fine-tune steps must be at least 0 (0: converted, not fine-tuned), got {config.finetune_steps}")
    if config.transfer_steps < 1 or config.transfer_batches < 1:
        raise SrsumError("transfer steps and transfer batches must be at least 1")
    if config.transfer_lr is not None and not config.transfer_lr > 0:
        raise SrsumError(f"transfer learning rate must be positive, got {config.transfer_lr}")
    for name, value in (("batch size", config.batch_size),
                        ("pretrain batch size", config.pretrain_batch_size), ("seeds", config.seeds),
                        ("workers", workers), ("eval batch size", config.eval_batch_size)):
        if value < 1:
            raise SrsumError(f"{name} must be at least 1, got {value}")
    if config.first_seed < 0:
        raise SrsumError(f"first seed must be at least 0, got {config.first_seed}")
    if not 0.0 <= config.ramp_fraction <= 1.0:
        raise SrsumError(f"ramp fraction must be between 0 and 1, got {config.ramp_fraction}")
    if config.eval_limit is not None and config.eval_limit < 1:
        raise SrsumError(f"eval limit must be at least 1, got {config.eval_limit}")
    if config.pretrain_lr <= 0 or config.finetune_lr <= 0:
        raise SrsumError("learning rates must be positive")
    if config.threshold_init is not None and config.threshold_init <= 0:
        raise SrsumError(f"threshold init must be positive, got {config.threshold_init}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise SrsumError(f"device {config.device!r} asked for, but torch sees no CUDA device")
    tasks = {name: build_task(name, config.data_dir) for name in config.tasks}
    sizes = list(config.seg_sizes) + ([config.ablation_seg_size] if config.ablations else [])
    for name, task in tasks.items():
        for s in sizes:
            if s < 1 or s > task.max_source_len:
                raise SrsumError(f"segment size {s} is outside 1..{task.max_source_len}, the {name} "
                                 f"task's input length")
    if any(v != "full" for v in (*config.variants, *config.ablations)) and not config.seg_sizes and not config.ablations:
        raise SrsumError("no segment size chosen")
    info = {name: task.describe() for name, task in tasks.items()}
    for name, task in tasks.items():
        if hasattr(task, "local_only_ceiling"):
            info[name]["local_only_ceiling"] = {str(s): task.local_only_ceiling(s) for s in sorted(set(sizes))}
    return info


def pretrain_seed(config: StudyConfig, seed: int) -> int:
    """Like the paper (one pretrained t5-small), every seed fine-tunes the same pretrained model,
    unless ``pretrain_per_seed`` gives each seed its own pretraining too."""
    return seed if config.pretrain_per_seed else 0


def finetune_jobs(config: StudyConfig, task: str, seed: int, family: str = "t5") -> list[Job]:
    jobs = []
    for variant in config.variants:
        sizes = [None] if variant == "full" else config.seg_sizes
        jobs += [Job(task, seed, variant, s, family) for s in sizes]
    for variant in config.ablations:
        job = Job(task, seed, variant, config.ablation_seg_size, family)
        if job not in jobs:
            jobs.append(job)
    return jobs


def plan(config: StudyConfig) -> tuple[list[Job], dict[Job, list[Job]]]:
    """Pretraining jobs, and for each the fine-tuning jobs that start from its checkpoint."""
    pretrains, followers = [], {}
    for family in config.families:
        for task in config.tasks:
            for seed in range(config.first_seed, config.first_seed + config.seeds):
                root = Job(task, pretrain_seed(config, seed), family=family)
                if root not in followers:
                    pretrains.append(root)
                    followers[root] = []
                followers[root] += finetune_jobs(config, task, seed, family)
    return pretrains, followers


# --------------------------------------------------------------------------------------------------
# the work a process does
# --------------------------------------------------------------------------------------------------


def checkpoint_path(work_dir: str, job: Job, model_tag: str = "") -> Path:
    tag = f"-{model_tag}" if model_tag else ""
    return Path(work_dir) / f"pretrained-{job.family}{tag}-{job.task}-seed{job.seed}.pt"


def run_pretrain(job: Job, config: StudyConfig, work_dir: str) -> dict:
    """Train the full-attention model of (task, seed) from scratch and save it for its fine-tunings.

    A checkpoint already in ``work_dir`` with its record beside it (``.json``, written here) is reused,
    so a sweep can be rerun with other fine-tuning settings without pretraining again; the record says so."""
    saved = checkpoint_path(work_dir, job, config.model_tag)
    if saved.is_file() and saved.with_suffix(".json").is_file():
        return {**json.loads(saved.with_suffix(".json").read_text(encoding="utf-8")), "reused": str(saved)}
    start = time.perf_counter()
    task = build_task(job.task, config.data_dir)
    torch.manual_seed(1_000 + job.seed)
    model = new_model(job.family, task.vocab_size, config.size, task.max_source_len)
    steps = config.pretrain_steps or task.pretrain_steps
    log = train(model, task, steps=steps, batch_size=config.pretrain_batch_size,
                lr=config.pretrain_lr, seed=1_000 + job.seed, device=config.device,
                ramp_steps=round(steps * config.ramp_fraction))
    metrics = evaluate(model, task, batch_size=config.eval_batch_size, device=config.device,
                       limit=config.eval_limit)  # teacher-forced only: srsum's decoder needs a converted model
    torch.save(model.cpu().state_dict(), saved)
    record = {**record_keys(job, config), "kind": "pretrain", **log, **metrics, "parameters": count_parameters(model),
              "steps": steps, "wall_seconds": time.perf_counter() - start}
    saved.with_suffix(".json").write_text(json.dumps(record), encoding="utf-8")
    return record


def run_finetune(job: Job, config: StudyConfig, work_dir: str, converter=None) -> dict:
    """Convert the pretrained model to the job's variant, fine-tune it, and score it."""
    start = time.perf_counter()
    task = build_task(job.task, config.data_dir)
    model = new_model(job.family, task.vocab_size, config.size, task.max_source_len)
    root = Job(job.task, pretrain_seed(config, job.seed), family=job.family)
    model.load_state_dict(torch.load(checkpoint_path(work_dir, root, config.model_tag), weights_only=True))
    seg_size = job.seg_size if job.seg_size is not None else task.max_source_len
    # the calibration batch is the first fine-tuning batch, drawn from a stream of its own so that
    # train() below sees exactly the batches it saw before calibration existed
    calibration_batch = next(task.train_batches(2_000 + job.seed, config.batch_size)).to(config.device)
    model.to(config.device)
    torch.manual_seed(2_000 + job.seed)  # the new SRformer parameters' initialisation
    model = to_variant(model, job.variant, seg_size, task.max_target_len, converter, config.threshold_init,
                       config.memory_ratio, calibration_batch, config.clamp, config.leak_init)
    calibration = calibration_of(model)
    moved = transfer(model, task, job, config) if split_transfer(job.variant)[1] else {}
    if config.freeze_encoder:
        freeze_encoder(model)
    log = {"steps": 0}  # converted, not fine-tuned
    if config.finetune_steps:
        log = train(model, task, steps=config.finetune_steps, batch_size=config.batch_size,
                    lr=config.finetune_lr, seed=2_000 + job.seed, device=config.device,
                    new_param_lr_scale=config.new_param_lr_scale)
    metrics = evaluate(model, task, batch_size=config.eval_batch_size, device=config.device,
                       limit=config.eval_limit)
    first_eval = next(task.eval_batches(config.eval_batch_size, config.eval_limit)).to(config.device)
    frozen = {"encoder_frozen": True} if config.freeze_encoder else {}
    return {**record_keys(job, config), **frozen, "kind": "finetune", **log, **metrics, **moved,
            "parameters": count_parameters(model),
            "calibration": calibration, "memory_after": memory_of(model, first_eval),
            "wall_seconds": time.perf_counter() - start}


def transfer(model, task, job: Job, config: StudyConfig) -> dict:
    """Attention transfer on ``transfer_batches`` training batches of a stream of their own; the record's fields."""
    from srsum.engine.transfer import DEFAULT_TRANSFER_LR, transfer_attention

    stream = task.train_batches(3_000 + job.seed, config.batch_size)
    batches = [vars(next(stream).to(config.device)) for _ in range(config.transfer_batches)]
    torch.manual_seed(3_000 + job.seed)
    result = transfer_attention(model, batches, config.transfer_steps, config.transfer_lr or DEFAULT_TRANSFER_LR)
    layers = [{"layer": i, "error_before": b, "error_after": a}
              for i, (b, a) in enumerate(zip(result.layer_error_before, result.layer_error_after))]
    return {"transfer_steps": result.steps, "transfer_lr": result.learning_rate, "transfer_layers": layers,
            "transfer_seconds": result.seconds, "transfer_first_loss": result.losses[0],
            "transfer_final_loss": result.losses[-1]}


def _layer_rows(rows) -> list[dict]:
    return [{"layer": r["layer"], "ratio": r["ratio"], "firing_rate": r.get("firing_rate")} for r in rows]


def calibration_of(model) -> list[dict] | None:
    """Per layer, the ratio ||rec|| / ||local|| and firing rate the calibration left (None: not calibrated)."""
    record = getattr(model.config, "srformer_calibration", None)
    if not record or not record.get("layers"):
        return None
    return _layer_rows(record["layers"])


def memory_of(model, batch) -> list[dict] | None:
    """The engine's memory report (per layer ratio and firing rate) on ``batch``; None without a memory."""
    try:
        from srsum.engine.calibration import memory_report
    except ImportError:
        return None
    rows = memory_report(model, batch)
    return _layer_rows(rows) if rows else None


def record_keys(job: Job, config: StudyConfig) -> dict:
    """What identifies a run's record; the tags of a non-default size (every run) or conversion (fine-tunings)."""
    tags = {"model_tag": config.model_tag, "conversion_tag": config.conversion_tag if job.variant else ""}
    return {"family": job.family, **{k: v for k, v in tags.items() if v}, "task": job.task, "seed": job.seed,
            "variant": job.variant or "pretrained", "seg_size": job.seg_size}


def run_job(job: Job, config: StudyConfig, work_dir: str, converter=None) -> dict:
    """Run one job; an exception becomes an error record, so one failure does not lose the sweep."""
    try:
        if job.variant is None:
            return run_pretrain(job, config, work_dir)
        return run_finetune(job, config, work_dir, converter)
    except Exception as err:  # noqa: BLE001 - reported in the results and by the CLI's exit status
        return {**record_keys(job, config), "kind": "pretrain" if job.variant is None else "finetune",
                "error": f"{type(err).__name__}: {err}"}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------------


def run_study(config: StudyConfig, *, workers: int = 1, work_dir: str | None = None, converter=None,
              progress=print, command: str = "") -> dict:
    """Run the whole sweep and return the results dict (see :func:`machine_info` for its ``meta``)."""
    task_info = validate(config, workers)
    if converter is None:
        engine_convert()  # fail now, not after pretraining, when the engine is missing
    pretrains, followers = plan(config)
    total = len(pretrains) + sum(len(v) for v in followers.values())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="srsum-quality-") as tmp:
        work = work_dir or tmp
        Path(work).mkdir(parents=True, exist_ok=True)
        if workers == 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # like a pool worker; a busy machine's spinning OpenMP threads cost 10x
            try:
                runs = _run_inline(pretrains, followers, config, work, converter, progress, total)
            finally:
                torch.set_num_threads(threads)
        else:
            runs = _run_pool(pretrains, followers, config, work, workers, progress, total)
    wall = time.perf_counter() - start
    return {"meta": machine_info(config.device, workers, wall, command), "config": config.as_dict(),
            "tasks": task_info, "runs": runs}


def _report(progress, runs: list[dict], total: int, record: dict) -> None:
    runs.append(record)
    what = Job(record["task"], record["seed"],
               None if record["variant"] == "pretrained" else record["variant"], record["seg_size"],
               record.get("family", "t5")).label
    if "error" in record:
        progress(f"[{len(runs)}/{total}] {what}: FAILED {record['error']}")
    else:
        generated = record.get("generated_score")
        also = "" if generated is None else f", generated {generated:.3f}"
        loss = "" if record.get("final_loss") is None else f"loss {record['final_loss']:.3f}, "
        moved = "" if not record.get("transfer_layers") else "transfer error " + " · ".join(
            f"{row['error_before']:.3f}->{row['error_after']:.3f}" for row in record["transfer_layers"]) + ", "
        progress(f"[{len(runs)}/{total}] {what}: score {record['score']:.3f}{also} "
                 f"({moved}{loss}{record['wall_seconds']:.0f}s)")


def _run_inline(pretrains, followers, config, work, converter, progress, total) -> list[dict]:
    runs: list[dict] = []
    for root in pretrains:
        record = run_job(root, config, work, converter)
        _report(progress, runs, total, record)
        if "error" in record:
            continue
        for job in followers[root]:
            _report(progress, runs, total, run_job(job, config, work, converter))
    return runs


def _run_pool(pretrains, followers, config, work, workers, progress, total) -> list[dict]:
    """Pretrainings first; each one's fine-tunings are queued the moment its checkpoint exists."""
    runs: list[dict] = []
    context = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(1,)) as pool:
        pending = {pool.submit(run_job, root, config, work): root for root in pretrains}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                record = future.result()
                _report(progress, runs, total, record)
                if job.variant is None and "error" not in record:
                    for follower in followers[job]:
                        pending[pool.submit(run_job, follower, config, work)] = follower
    return runs


def machine_info(device: str, workers: int, wall_seconds: float, command: str) -> dict:
    info = {"command": command, "wall_seconds": wall_seconds, "workers": workers, "device": device,
            "threads_per_worker": 1,
            "cpu_count": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform(),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    return info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
