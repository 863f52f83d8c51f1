#!/usr/bin/env python
"""Probe for issue 26, hypothesis 1: on the study's pretrained model (converted to SRformer, clamp off, calibrated on
its first fine-tuning batch), the share of the key/value projection biases and of the mean key/value in
C_σ = P - P_σ and in ν, for the first example of the batch and its first segment.

    python benchmarks/bias_share_probe.py bart lookup 16 --work-dir /work/qwork

args: family task seg_size; --work-dir: the study's work dir holding the pretrained checkpoint."""
import sys, torch
from srsum.quality.study import StudyConfig, Job, checkpoint_path
from srsum.quality.model import new_model
from srsum.quality.tasks import build_task
from srsum.engine import convert
from srsum.engine.calibration import observing, _run, srformer_layers
torch.set_num_threads(1)
family, taskname, s = sys.argv[1], sys.argv[2], int(sys.argv[3])
work_dir = sys.argv[sys.argv.index("--work-dir") + 1] if "--work-dir" in sys.argv else "/work/qwork"
cfg = StudyConfig(families=(family,)); task = build_task(taskname, cfg.data_dir)
m = new_model(family, task.vocab_size, cfg.size, task.max_source_len)
m.load_state_dict(torch.load(checkpoint_path(work_dir, Job(taskname, 0, family=family)), weights_only=True))
b = next(task.train_batches(2000, 8))
m = convert(m, "srformer", seg_size=s, schedule_length=task.max_target_len, clamp=None, calibration_batch=b)
seen = []
with observing(srformer_layers(m), lambda layer, q, k, v, valid: seen.append((layer, k, v, valid))):
    _run(m, {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "decoder_input_ids": b.decoder_input_ids})
for i, (layer, k, v, valid) in enumerate(seen):
    names = layer.projection_names
    bk = getattr(layer, names[1]).bias; bv = getattr(layer, names[2]).bias
    H, d = layer.n_heads, layer.head_dim
    bk = torch.zeros(H, d) if bk is None else bk.detach().view(H, d); bv = torch.zeros(H, d) if bv is None else bv.detach().view(H, d)
    kk, vv = k[0], v[0]  # (H, n, d) first example
    n = kk.shape[1]
    P = kk.transpose(-1, -2) @ vv
    Ps = kk[:, :s].transpose(-1, -2) @ vv[:, :s]
    C = P - Ps
    bias_term = (n - s) * bk[:, :, None] * bv[:, None, :]
    kbar, vbar = kk.mean(1), vv.mean(1)
    mean_term = (n - s) * kbar[:, :, None] * vbar[:, None, :]
    nu2 = kk.pow(2).sum(1)
    print(f"layer {i}: ||(n-s) b_k b_v^T|| / ||C|| = {(bias_term.norm() / C.norm()).item():.3f}; "
          f"||(n-s) kbar vbar^T|| / ||C|| = {(mean_term.norm() / C.norm()).item():.3f}; "
          f"n b_k^2 / nu^2 = {(n * bk.pow(2) / nu2).mean().item():.3f}; n kbar^2 / nu^2 = {(n * kbar.pow(2) / nu2).mean().item():.3f}; "
          f"||b_k||/rms(k) = {(bk.norm(dim=-1) / kk.pow(2).sum(-1).mean(-1).sqrt()).mean().item():.3f}")
