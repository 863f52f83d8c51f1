"""benchmarks/whole_article.py's bookkeeping: which cells run in which format, and the ratios its table prints."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("whole_article_bench", ROOT / "benchmarks" / "whole_article.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_srsum_systems_run_once_per_format_and_the_peers_in_their_own():
    pairs = bench.system_formats(["hf", "srformer", "ctranslate2-int8", "full"], ["float32", "int8"])
    assert pairs == [("hf", "float32"), ("srformer", "float32"), ("srformer", "int8"),
                     ("ctranslate2-int8", "int8"), ("full", "float32"), ("full", "int8")]
    assert bench.label({"system": "srformer", "dtype": "bfloat16"}) == "srformer bfloat16"
    assert bench.label({"system": "ctranslate2", "dtype": "float32"}) == "ctranslate2"


def test_the_table_gives_speed_against_hf_and_ctranslate2_int8_and_memory_against_hf():
    base = dict(model="t5-small", n=4096, beams=1, load=1.0, encoder_s=1.0, decode_s=1.0)
    cells = [dict(base, system="hf", dtype="float32", total_s=12.0, peak_mb=1000.0),
             dict(base, system="ctranslate2-int8", dtype="int8", total_s=8.0, peak_mb=1500.0),
             dict(base, system="srformer", dtype="bfloat16", total_s=4.0, peak_mb=500.0),
             dict(base, system="srformer", dtype="int8", beams=4, skipped="timed out")]
    rows = {line.split("|")[4].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in bench.report(cells).splitlines()[2:]}
    assert rows["srformer bfloat16"][8:11] == ["0.50", "3.00x", "2.00x"]  # peak / hf, vs hf, vs ct2 int8
    assert rows["ctranslate2-int8"][8:11] == ["1.50", "1.50x", "1.00x"]
    assert rows["srformer int8"][4] == "timed out"
