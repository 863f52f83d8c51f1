"""Diagnostic probe (issue 13, session 10): where a decode's time before step 2 goes, cell by cell, in a grid run
in one process like ``decode.py --in-process`` (t5-small shapes, n 1k / 16k, batch 1 / 8, peer and srformer s 8 /
64 eager / compiled; the peer at n 16k is left out). Per cell (its timed decode): state building and steps 0-1,
the parts of state building (segment projection, Gram matrix, P and nu, ``use_schedule``), and across state
building the process's CPU time, other threads' CPU time, minor page faults, steal time and garbage
collection. Not a benchmark: it patches srsum's classes to time them.

    python benchmarks/state_building_probe.py 2        # 2 rounds (about 13 minutes on the development machine)
"""

import gc
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode as bench
import srsum.decoding as sd
import torch._dynamo.utils as du
gc_time = [0.0, 0]; t0 = [0]
def cb(phase, info):
    if phase == "start": t0[0] = time.perf_counter()
    else:
        gc_time[0] += time.perf_counter() - t0[0]; gc_time[1] += 1 if info["generation"] == 2 else 0
gc.callbacks.append(cb)
marks = []
import collections
from srsum.engine import layer, segments, state
import srsum.engine.ops as ops
acc = collections.defaultdict(float)
def timed(owner, name, label=None):
    orig = getattr(owner, name)
    def run(*a, **k):
        t = time.perf_counter(); r = orig(*a, **k); acc[label or name] += time.perf_counter() - t; return r
    setattr(owner, name, run)
timed(layer.SRformerCrossAttention, "start_decoding"); timed(state.DecodeState, "use_schedule")
timed(segments.EncoderSegments, "products"); timed(segments.EncoderSegments, "context"); timed(segments.EncoderRows, "__init__", "rows")
timed(ops, "row_gram")
orig_init, orig_logits = sd.SharedStateDecoder.__init__, sd.SharedStateDecoder.logits
import os, resource
def threads_cpu():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            f = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            out[tid] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return out
def system_busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK"), f[7] / os.sysconf("SC_CLK_TCK")  # busy, steal
def init(self, *a, **k):
    marks.clear(); acc.clear()
    sys0 = system_busy()
    before, cpu0, ru0 = threads_cpu(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    marks.append(("init", time.perf_counter())); orig_init(self, *a, **k); marks.append(("built", time.perf_counter()))
    after, ru1 = threads_cpu(), resource.getrusage(resource.RUSAGE_SELF)
    sys1 = system_busy(); acc["system_busy"] = sys1[0] - sys0[0]; acc["steal"] = sys1[1] - sys0[1]
    main = str(os.getpid())
    others = sum(v - before.get(t, 0) for t, v in after.items() if t != main)
    acc["cpu"] = time.process_time() - cpu0; acc["main_cpu"] = after.get(main, 0) - before.get(main, 0)
    acc["other_threads_cpu"] = others; acc["threads"] = len(after)
    acc["minflt_k"] = (ru1.ru_minflt - ru0.ru_minflt) / 1000; acc["majflt"] = ru1.ru_majflt - ru0.ru_majflt
    acc["invol_cs"] = ru1.ru_nivcsw - ru0.ru_nivcsw
def logits(self, tokens):
    if self.position < 3: marks.append((f"s{self.position}", time.perf_counter()))
    return orig_logits(self, tokens)
sd.SharedStateDecoder.__init__ = init
sd.SharedStateDecoder.logits = logits
base = dict(model="t5-small", beams=1, new_tokens=128, device="cpu", dtype="float32", threads=1)
grid = []
for n in (1024, 16384):
    for b in (1, 8):
        grid.append(dict(base, n=n, batch=b, system="peer", step="hf", seg_size=8))
        for step in ("eager", "compiled"):
            for s in (8, 64):
                grid.append(dict(base, n=n, batch=b, system="srformer", step=step, seg_size=s))
models = {}
for rnd in range(int(sys.argv[1])):
    for cell in grid:
        if cell["system"] == "peer" and cell["n"] > 2000: continue
        g0 = gc_time[0]; frames = du.counters["stats"].get("unique_graphs", 0)
        r = bench.run_cell(cell, models)
        T = 128
        pre = r["decode_s"] - r["after_first_ms_per_token"] * (T - 1) / 1000
        d = dict(marks)
        split = "" if "init" not in d else f"build {d['built']-d['init']:.2f} s0 {d['s1']-d['s0']:.2f} s1 {d['s2']-d['s1']:.2f}"
        print(rnd, cell["n"], cell["batch"], cell["step"], cell["seg_size"], f"pre {pre:.2f}", split,
              {k: round(v, 2) for k, v in acc.items()}, f"gc {gc_time[0]-g0:.2f}s gen2 {gc_time[1]} graphs {du.counters['stats'].get('unique_graphs',0)-frames}", flush=True)
