"""A plain loop version of SRformer cross-attention that mirrors SPEC sections 3-7 line by line.

Slow on purpose: one example, one head, one decoder position at a time, no shared helpers from
``ops.py``. The tests hold the vectorised training path and the decoding state to it.
"""

from __future__ import annotations

import math

import torch


def reference_cross_attention(query, keys, values, key_valid, settings, weight=None, leak=None, threshold=None):
    """query (B, H, T, d) already scaled; keys/values (B, H, n, d); key_valid (B, n) bool or None.

    weight (d, d), leak, threshold: the layer's W, λ, θ (recurrent variants). Returns (B, H, T, d) float32.
    """
    batch, heads, steps, dim = query.shape
    out = torch.zeros(batch, heads, steps, dim)
    for b in range(batch):
        real = torch.arange(keys.shape[2]) if key_valid is None else key_valid[b].nonzero().flatten()
        for h in range(heads):
            k = keys[b, h, real].double()
            v = values[b, h, real].double()
            q = query[b, h].double()
            out[b, h] = _one_head(q, k, v, settings, weight, leak, threshold).float()
    return out


def _one_head(q, k, v, settings, weight, leak, threshold):
    n, dim = k.shape
    s, G, variant = settings.seg_size, settings.schedule_length, settings.attention
    M = math.ceil(n / s)
    segments = [(j * s, min(n, j * s + s)) for j in range(M)]
    if variant == "full":
        return torch.stack([_softmax_attend(q[t], k, v) for t in range(q.shape[0])])
    P = k.T @ v
    nu = torch.sqrt((k ** 2).sum(0)) + 1e-6
    U = torch.zeros(dim, dim, dtype=k.dtype)
    R = None
    previous = None
    rows = []
    for t in range(q.shape[0]):
        sigma = min(M - 1, (t * M) // G)
        lo, hi = segments[sigma]
        if settings.has_recurrent and sigma != previous:  # the RAF steps once per segment change
            P_sigma = k[lo:hi].T @ v[lo:hi]
            P_all = P
            if settings.clamp is not None:
                P_all = P.clamp(-settings.clamp, settings.clamp)
                P_sigma = P_sigma.clamp(-settings.clamp, settings.clamp)
            C = P_all if variant == "full_product" else P_all - P_sigma
            X = C @ weight.double().T
            if variant == "no_raf":
                R = X
            else:
                lam, theta = float(leak.detach()), float(threshold.detach())
                U = lam * U + X
                R = torch.clamp(U / theta - 1, min=0)
                U = U - theta * (U > theta).double()
        previous = sigma
        row = torch.zeros(dim, dtype=k.dtype)
        if settings.has_local:
            if variant == "xl" and sigma > 0:
                plo, _ = segments[sigma - 1]
                row = row + _softmax_attend(q[t], k[plo:hi], v[plo:hi])
            elif variant == "global":
                means_k = torch.stack([k[a:b].mean(0) for a, b in segments])
                means_v = torch.stack([v[a:b].mean(0) for a, b in segments])
                row = row + _softmax_attend(q[t], torch.cat([k[lo:hi], means_k]), torch.cat([v[lo:hi], means_v]))
            else:
                row = row + _softmax_attend(q[t], k[lo:hi], v[lo:hi])
        if settings.has_recurrent:
            rec = q[t] @ R
            row = row + (rec if variant == "no_norm" else rec / nu)
        rows.append(row)
    return torch.stack(rows)


def raf_scan_loop(inputs, leak, threshold):
    """The RAF over a sequence, one ``raf_step`` per segment under autograd: (B, H, L, d, d) -> R.

    The plain version of ``ops.raf_scan`` (whose backward is written by hand); tests compare the two,
    outputs and gradients with respect to X, λ and θ."""
    U = torch.zeros_like(inputs[:, :, 0])
    outputs = []
    for l in range(inputs.shape[2]):
        U = leak * U + inputs[:, :, l]
        outputs.append(torch.clamp(U / threshold - 1, min=0))
        U = U - threshold * (U > threshold).to(U.dtype).detach()
    return torch.stack(outputs, dim=2)


def _softmax_attend(q, k, v):
    weights = torch.softmax(k @ q, dim=0)
    return weights @ v
