"""benchmarks/number_formats.py: bfloat16 against float32 on a trained checkpoint, figures from real runs."""

import importlib.util
from pathlib import Path

import pytest
from conftest import CNN_SAMPLE

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("formats_bench", ROOT / "benchmarks" / "number_formats.py")
formats_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(formats_bench)


def test_common_prefix():
    assert formats_bench.common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert formats_bench.common_prefix([], [1]) == 0 and formats_bench.common_prefix([7], [7]) == 1


@pytest.mark.usefixtures("shared_data", "single_thread")
def test_float32_against_itself_agrees_fully_and_bfloat16_is_measured(trained_t5):
    model = str(trained_t5.run_dir / "best")
    rows = formats_bench.measure(model, str(CNN_SAMPLE), ["float32", "float32", "bfloat16"], limit=3, max_source=64,
                                 max_length=6, logit_tokens=8, batch_size=2)
    reference, same, half = rows
    assert reference["format"] == "float32" and reference["articles"] == 3 and "prefix_agreement" not in reference
    assert same["prefix_agreement"] == 1.0 and same["identical"] == 1.0 and same["logit_error_max"] == 0.0
    assert same["rouge_change"] == {key: 0.0 for key in reference["rouge"]}
    assert half["format"] == "bfloat16" and 0.0 < half["logit_error_max"] < 1.0  # rounded, not another model
    assert 0.0 <= half["prefix_agreement"] <= 1.0 and 0.0 <= half["top1_agreement"] <= 1.0
    assert "| float32 |" in formats_bench.report(rows) and "| bfloat16 |" in formats_bench.report(rows)
