"""srsum profile: SPEC section 10's figures, counted FLOPs against the analytic ones (to the digit), the
encoder's self-attention, the bounded measured run, the sweep's files and the CLI's limits and one-line
errors. Random models only (nothing downloaded). The scaling of probe counts is in test_profiling_scaling.py."""

import json
import re
import struct

import pytest
import torch
import typer
from typer.testing import CliRunner

from srsum import profiling
from srsum.cli.profile import format_count, profile_command
from srsum.errors import SrsumError
from srsum.profiling import CostShape

VARIANTS = profiling.PROFILED_VARIANTS

TINY_T5 = dict(model_type="t5", vocab_size=64, d_model=64, d_kv=16, num_heads=4, d_ff=64, num_layers=2,
               num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
TINY_BART = dict(model_type="bart", vocab_size=64, d_model=64, encoder_layers=1, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                 max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                 decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=None)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_config(tmp_path, fields, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(fields))
    return str(path)


def cost(variant, function, **shape):
    return function(variant, CostShape(**shape))


# ------------------------------------------------------------------ SPEC section 10, exactly
PAPER = dict(n=1024, m=128, seg_size=64, head_dim=64)


def test_paper_computation_figures_and_reduction():
    values = {v: cost(v, profiling.analytic_computation, **PAPER) for v in VARIANTS}
    assert values == {"full": 8_388_608, "segmented": 524_288, "srformer": 4_718_592}
    assert profiling.reduction(values["srformer"], values["full"]) == pytest.approx(0.4375, abs=0)


def test_paper_memory_figures_and_reduction():
    values = {v: cost(v, profiling.analytic_memory, **PAPER) for v in VARIANTS}
    assert values == {"full": 196_608, "segmented": 73_728, "srformer": 139_264}
    assert round(profiling.reduction(values["srformer"], values["full"]) * 100, 1) == 29.2


def test_fig5_long_input_reduction():
    shape = dict(n=8192, m=1024, seg_size=64, head_dim=64)
    full = cost("full", profiling.analytic_computation, **shape)
    srformer = cost("srformer", profiling.analytic_computation, **shape)
    assert round(profiling.reduction(srformer, full) * 100, 2) == 92.97
    assert srformer / full == pytest.approx(64 / 1024 + 64 / 8192)  # d/m + s/n


def test_left_out_terms_and_decode_reads():
    terms = cost("srformer", profiling.left_out_terms, **PAPER)
    assert terms == {"q·R": 128 * 64**2, "W": 16 * 64**3, "RAF": 16 * 64**2}
    assert terms["W"] + terms["RAF"] == 16 * 64**3 + 16 * 64**2  # SPEC: RAF and W = M d³ + M d²
    assert cost("full", profiling.left_out_terms, **PAPER) == {"q·R": 0, "W": 0, "RAF": 0}
    assert cost("full", profiling.decode_values_read, **PAPER) == 2 * 1024 * 64
    assert cost("segmented", profiling.decode_values_read, **PAPER) == 2 * 64 * 64
    assert cost("srformer", profiling.decode_values_read, **PAPER) == 2 * 64 * 64 + 64**2 + 64


def test_segment_larger_than_input_is_one_segment():
    shape = CostShape(n=100, m=16, seg_size=512, head_dim=64)
    assert shape.segments == 1 and shape.local_keys == 100
    assert profiling.analytic_computation("segmented", shape) == profiling.analytic_computation("full", shape)
    report = profiling.profile(n=100, m=16, seg_size=512, count=False, measure=False, bandwidth="100")
    assert any("one segment" in note for note in report.notes)


def test_report_rows_carry_reductions():
    report = profiling.profile(n=1024, m=128, seg_size=64, count=False, measure=False, bandwidth="h100")
    rows = {row.label: row for row in report.rows()}
    assert rows["computation / head-layer"].reduction("srformer") == pytest.approx(0.4375)
    assert rows["memory / head-layer"].reduction("srformer") == pytest.approx(0.29166, abs=1e-4)
    decoder = rows["computation / decoder"].values
    assert decoder["full"] == 8_388_608 * 8 * 6  # heads x layers x batch
    floor = [r for r in report.rows() if r.label.startswith("bandwidth floor")][0]
    assert floor.values["full"] == pytest.approx(2 * 1024 * 64 * 48 * 4 / 3350e9)


# ------------------------------------------------------------------ bandwidth, devices, dtypes
def test_bandwidth_defaults_and_parsing():
    assert profiling.gpu_bandwidth_gbps("NVIDIA H100 80GB HBM3") == (3350.0, "H100 SXM")
    assert profiling.gpu_bandwidth_gbps("NVIDIA H200")[0] == 4800.0
    assert profiling.gpu_bandwidth_gbps("NVIDIA A100-SXM4-80GB")[0] == 2039.0
    assert profiling.gpu_bandwidth_gbps("NVIDIA L40S")[1] == "L40S"
    assert profiling.gpu_bandwidth_gbps("Some Future Card") is None
    assert profiling.parse_bandwidth("h200") == 4800.0
    assert profiling.parse_bandwidth("900") == 900.0
    with pytest.raises(SrsumError):
        profiling.parse_bandwidth("fast")


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "gpu0"])
def test_unknown_device_is_an_srsum_error(bad):
    with pytest.raises(SrsumError, match="device"):
        profiling.resolve_device(bad)


def test_dtypes_and_positive_integers():
    assert profiling.resolve_dtype_name("bf16") == "bfloat16"
    with pytest.raises(SrsumError, match="dtype"):
        profiling.resolve_dtype_name("int8")
    for bad in ("0", "-3", "abc", "1.5", 0, True):
        with pytest.raises(SrsumError, match="--seg-size"):
            profiling.require_positive_int(bad, "--seg-size")


def test_live_bytes_tracker_counts_new_storages_only():
    weight = torch.randn(100, 100)
    with profiling.LiveBytesTracker() as tracker:
        transposed = weight.t()  # a view of a tensor made before: 0 bytes
        product = weight @ transposed  # 40,000 bytes
        shifted = product + 1  # 40,000 more while both live
        del product
        shifted.add_(1)  # in place: nothing new
    assert tracker.peak == 80_000 and tracker.live == 40_000


# ------------------------------------------------------------------ counted against analytic
@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    config = write_config(tmp_path_factory.mktemp("cfg"), TINY_T5)
    return profiling.profile(model=config, n=64, m=16, seg_size=8, bandwidth="100", measure=True)


def _whole(result, report, decode=False):
    """The analytic whole-decoder products, summed from the per head-layer terms here (not the report's total)."""
    shape = report.shape
    if not decode:
        return sum(result.products.values()) * shape.head_layers
    per_row = sum(v for name, v in result.decode_products.items() if name in profiling.ROW_DECODE_PRODUCTS)
    per_example = sum(result.decode_products.values()) - per_row  # the state the beams share
    return (per_row * shape.decode_rows + per_example * shape.head_layers
            + sum(result.shared_decode_products.values()) * shape.batch)


def test_counted_products_equal_analytic(tiny_report):
    shape = tiny_report.shape
    assert (shape.heads, shape.head_dim, shape.layers) == (4, 16, 2)
    for variant, result in tiny_report.variants.items():
        assert result.counted_teacher_forced.products == _whole(result, tiny_report), variant
        assert result.counted_decode.products == _whole(result, tiny_report, decode=True), variant
        assert result.counted_teacher_forced.products == result.teacher_products_total
    assert not [note for note in tiny_report.notes if "counted matrix products" in note]


def test_full_attention_products_are_exact(tiny_report):
    shape = tiny_report.shape
    full = tiny_report.variants["full"]
    assert full.counted_teacher_forced.products == 4 * shape.m * shape.n * shape.head_dim * shape.head_layers


def test_raf_and_elementwise_work_is_counted(tiny_report):
    full, srformer = tiny_report.variants["full"], tiny_report.variants["srformer"]
    assert full.counted_teacher_forced.other > 0  # the softmax
    assert srformer.counted_teacher_forced.other > full.counted_teacher_forced.other  # RAF, ν, complement
    projections = {p.counted_teacher_forced.projections for p in tiny_report.variants.values()}
    assert len(projections) == 1 and projections.pop() > 0  # same q/k/v/o work for every variant


def test_measured_figures_are_present_and_say_what_ran(tiny_report):
    for result in tiny_report.variants.values():
        measured = result.measured
        assert measured.decode_step_s > 0 and 0 < measured.cross_attention_step_s <= measured.decode_step_s
        assert measured.decode_peak_bytes > 0 and measured.teacher_forced_peak_bytes > 0
        # runs stop early rather than overrun their share of the budget: at most m steps, at most 3 repeats
        assert 1 <= measured.repeats <= 3
        assert 1 <= measured.steps_timed <= tiny_report.shape.m and 1 <= measured.peak_steps <= tiny_report.shape.m
        assert measured.seconds < 60
    assert "n 64, m 16" in tiny_report.measuring and "of the 60 s budget" in tiny_report.measuring


def test_measured_decode_is_srsums_decoder_and_names_its_step(tmp_path, monkeypatch):
    """--measure times srsum's decoder (one state per example, shared by the beams), as srsum summarize
    runs it, and the measured rows say which step mode ran."""
    from srsum import decoding

    built = []
    real = decoding.SharedStateDecoder
    monkeypatch.setattr(decoding, "SharedStateDecoder", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    report = profiling.profile(model=write_config(tmp_path, TINY_T5), n=32, m=4, seg_size=8, batch=2, beams=3,
                               bandwidth="100", count=False, measure=True, time_budget=30, variants=("srformer",))
    measured = report.variants["srformer"].measured
    assert measured.decoder_step == "eager" and measured.repeats >= 1
    assert built and all(d.encoder_states.shape[0] == 2 for d in built)  # 2 states for 2 x 3 rows
    labels = [row.label for row in report.rows()]
    assert "measured time / step, whole decoder (srsum decoder, eager step)" in labels
    assert "shared by its beams, eager step" in report.measuring


def test_beams_add_only_their_query_rows_to_the_decode_count(tmp_path):
    config = write_config(tmp_path, TINY_T5)
    one, four = (profiling.profile(model=config, n=64, m=8, seg_size=8, beams=beams, bandwidth="100",
                                   variants=("srformer",)).variants["srformer"] for beams in (1, 4))
    rows = sum(v for name, v in one.decode_products.items() if name in profiling.ROW_DECODE_PRODUCTS)
    assert rows and len(one.decode_products) > 3  # the state's products: P, P·Wᵀ, the RAF inputs
    assert four.counted_decode.products - one.counted_decode.products == 3 * rows * 4 * 2  # x heads x layers
    assert four.counted_decode.products < 4 * one.counted_decode.products


def test_bart_counts_match_analytic(tmp_path):
    config = write_config(tmp_path, TINY_BART)
    report = profiling.profile(model=config, n=48, m=8, seg_size=16, bandwidth="100", measure=False,
                               variants=("full", "srformer"))
    assert report.shape.head_dim == 16
    # BART's products are not clamped by default (SPEC section 5): X_σ = P·Wᵀ − K_σᵀ·(V_σ·Wᵀ), as for T5
    assert "P_σ·Wᵀ" not in report.variants["srformer"].products
    for result in report.variants.values():
        assert result.counted_teacher_forced.products == _whole(result, report), result.variant
        assert result.counted_decode.products == _whole(result, report, decode=True), result.variant


@pytest.mark.parametrize("tiny", [TINY_T5, TINY_BART])
def test_decode_counts_match_analytic_when_segments_are_skipped(tmp_path, tiny):
    """M > G: the decoder projects only the segments it visits and takes P from the Gram matrix."""
    config = write_config(tmp_path, tiny)
    report = profiling.profile(model=config, n=160, m=8, seg_size=8, bandwidth="100", measure=False,
                               variants=("full", "srformer"))
    srformer, full = report.variants["srformer"], report.variants["full"]
    assert "W_k·G" in srformer.decode_products and "W_k·G" not in srformer.products
    assert srformer.counted_decode.products == _whole(srformer, report, decode=True)
    assert srformer.counted_decode.projections < full.counted_decode.projections / 2  # 8 of 20 segments


def test_checkpoint_folder_is_profiled_from_its_config(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    fields = {k: v for k, v in TINY_T5.items() if k != "model_type"}
    T5ForConditionalGeneration(T5Config(**fields)).save_pretrained(tmp_path / "ckpt")
    report = profiling.profile(model=str(tmp_path / "ckpt"), n=32, m=4, seg_size=8, bandwidth="100",
                               measure=False, variants=("full",))
    assert report.model.startswith("checkpoint") and report.shape.heads == 4
    full = report.variants["full"]
    assert full.counted_teacher_forced.products == _whole(full, report)


# ------------------------------------------------------------------ sweep files
def test_sweep_writes_readable_json_and_png(tmp_path):
    config = write_config(tmp_path, TINY_T5)
    report = profiling.sweep(over="m", lengths=[4, 8], model=config, seg_size=8, bandwidth="100", measure=True)
    json_path, png_path = profiling.write_sweep_outputs(report, tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert data["n"] == [32, 64] and data["m"] == [4, 8]
    assert set(data["series"]["computation"]) == set(VARIANTS)
    assert all(v is not None for v in data["series"]["measured_cross_attention_step_s"]["srformer"])
    header = png_path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 500 and height > 200


# ------------------------------------------------------------------ the CLI
def cli():
    app = typer.Typer(add_completion=False)
    app.command("profile")(profile_command)

    @app.callback()
    def main():
        pass

    return app


def invoke(*args):
    return CliRunner().invoke(cli(), ["profile", *args])


def test_cli_table_shows_spec_reductions():
    result = invoke("--seg-size", "64", "--no-count", "--no-measure", "--bandwidth", "h100")
    assert result.exit_code == 0, result.output
    assert "43.75%" in result.stdout and "29.17%" in result.stdout
    assert "8,388,608" in result.stdout and "4,718,592" in result.stdout


def test_cli_json_and_long_inputs(tmp_path):
    result = invoke("--m", "1024", "--n", "8192", "--no-count", "--no-measure", "--bandwidth", "100", "--json",
                    "--output-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    row = [r for r in data["rows"] if r["label"] == "computation / head-layer"][0]
    assert round(row["reduction_vs_full"]["srformer"] * 100, 2) == 92.97
    assert json.loads((tmp_path / "profile.json").read_text())["shape"]["n"] == 8192


def test_cli_sweep_writes_files(tmp_path):
    config = write_config(tmp_path, TINY_T5)
    result = invoke("--sweep", "--lengths", "32,64", "--m", "4", "--seg-size", "8", "--model", config,
                    "--no-measure", "--bandwidth", "100", "--output-dir", str(tmp_path / "sweep"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["n"] == [32, 64]


@pytest.mark.parametrize("args, words", [
    (["--seg-size", "0"], "--seg-size"),
    (["--seg-size", "abc"], "--seg-size"),
    (["--seg-size", "2.5"], "--seg-size"),
    (["--n", "0"], "--n"),
    (["--m", "-1"], "--m"),
    (["--n", "1e12"], "--n"),
    (["--m", "1e12"], "--m"),
    (["--n", "1048577"], "--n"),
    (["--m", "9" * 5000], "--m"),
    (["--seg-size", "-8"], "--seg-size"),
    (["--seg-size", "1.0"], "--seg-size"),
    (["--batch", "1e6"], "--batch"),
    (["--batch", "5000"], "--batch"),
    (["--beams", "0x10"], "--beams"),
    (["--beams", "65"], "--beams"),
    (["--schedule-length", "nan"], "--schedule-length"),
    (["--encoder-block", "-512"], "--encoder-block"),
    (["--time-budget", "0"], "--time-budget"),
    (["--time-budget", "inf"], "--time-budget"),
    (["--measure", "--time-budget", "soon"], "--time-budget"),
    (["--sweep", "--lengths", "64,1e12"], "--lengths"),
    (["--sweep", "--sweep-over", "m", "--lengths", "200000"], "--lengths"),
    (["--device", "quantum"], "device"),
    (["--dtype", "int8"], "dtype"),
    (["--model", "./missing/config.json"], "--model"),
    (["--sweep", "--sweep-over", "x"], "--sweep-over"),
])
def test_cli_bad_input_is_one_line(args, words):
    result = invoke(*args, "--no-count", "--no-measure", "--bandwidth", "100")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["--n", "1e12"], ["--m", "1e12"], ["--n", "4294967296"], ["--batch", "-1"]])
def test_cli_refuses_values_before_any_work(monkeypatch, args):
    """Out-of-range values fail in the option checks: nothing is built, counted or measured first."""
    def must_not_run(**kwargs):
        raise AssertionError("profiling ran before the options were checked")

    monkeypatch.setattr(profiling, "profile", must_not_run)
    monkeypatch.setattr(profiling, "sweep", must_not_run)
    result = invoke(*args, "--measure")
    assert result.exit_code == 2 and result.stderr.startswith("Error: "), result.output


def test_limits_take_the_largest_value_and_refuse_the_next():
    limit = profiling.MAX_LENGTH
    assert profiling.require_positive_int(str(limit), "--n") == limit
    assert profiling.require_positive_int("+8", "--seg-size") == 8
    for bad in (limit + 1, str(limit + 1), "1e3", "0x10", " ", "٣"):
        with pytest.raises(SrsumError, match="--n must be a whole number from 1 to 1,048,576"):
            profiling.require_positive_int(bad, "--n")
    assert profiling.check_time_budget("2.5") == 2.5


def test_format_count_keeps_paper_numbers_exact():
    assert format_count(8_388_608) == "8,388,608"
    assert format_count(1_610_612_736) == "1.611 G"


# ------------------------------------------------------------------ counted = analytic at the paper's settings
@pytest.fixture(scope="module")
def paper_report():
    """The default model (t5-small shapes, 6 decoder layers) at the paper's n 1024, m 128, s 64, counted."""
    return profiling.profile(n=1024, m=128, seg_size=64, bandwidth="h100")


def test_counted_equals_analytic_to_the_digit_at_the_papers_settings(paper_report):
    shape = paper_report.shape
    assert (shape.n, shape.m, shape.seg_size, shape.head_dim, shape.heads, shape.layers) == (1024, 128, 64, 64, 8, 6)
    for variant, result in paper_report.variants.items():
        assert result.counted_teacher_forced.products == _whole(result, paper_report), variant
        assert result.counted_decode.products == _whole(result, paper_report, decode=True), variant
    rows = {row.label: row for row in paper_report.rows()}
    for path in ("teacher-forced", "m decode steps"):
        assert rows[f"counted matrix products, {path}"].values == rows[f"analytic matrix products, {path}"].values
    # the paper's own figures stay in the same report
    assert rows["computation / head-layer"].reduction("srformer") == 0.4375
    assert round(rows["memory / head-layer"].reduction("srformer") * 100, 1) == 29.2
    # full attention: 2 products of m n d multiply-adds per head-layer, in both passes
    full = paper_report.variants["full"]
    assert full.counted_decode.products == full.counted_teacher_forced.products == 4 * 128 * 1024 * 64 * 48
    assert "scaled exactly to n 1024, m 128, 6 layers" in paper_report.counting


def test_counting_cost_does_not_grow_with_the_lengths(tmp_path):
    """Counting at n 65536 runs the same tiny probes (so it takes as long as at n 64): the report says so."""
    config = write_config(tmp_path, TINY_T5)
    report = profiling.profile(model=config, n=65536, m=128, seg_size=64, bandwidth="100")
    largest_n, largest_m = map(int, re.search(r"n <= (\d+), m <= (\d+)", report.counting).groups())
    assert largest_n <= 16 and largest_m <= 8
    full, srformer = report.variants["full"], report.variants["srformer"]
    assert full.counted_teacher_forced.products == 4 * 128 * 65536 * 16 * report.shape.head_layers
    assert srformer.counted_decode.products == _whole(srformer, report, decode=True)


def test_cli_default_table_has_counted_rows_and_paper_reductions():
    result = invoke("--seg-size", "64", "--bandwidth", "h100")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "43.75%" in out and "29.17%" in out
    counted = [line for line in out.splitlines() if "counted matrix products, teacher-forced" in line][0]
    analytic = [line for line in out.splitlines() if "analytic matrix products, teacher-forced" in line][0]
    assert counted.split("│")[2:] == analytic.split("│")[2:]
    assert "measured: not run (add --measure" in out and "measured time" not in out


# ------------------------------------------------------------------ the encoder's self-attention (issue 16)
def test_encoder_figures_full_against_blocked():
    shape = profiling.EncoderShape(n=4096, head_dim=64, heads=8, layers=6, batch=2, block=512)
    assert profiling.encoder_computation("n×n scores", shape) == profiling.encoder_computation("blocked", shape)
    assert profiling.encoder_computation("blocked", shape) == 4096 * 4096 * 64
    assert profiling.encoder_memory("n×n scores", shape) == 4096 * 64 + 4096 * 4096
    assert profiling.encoder_memory("blocked", shape) == 4096 * 64 + 512 * 4096
    assert profiling.encoder_peak_scores("n×n scores", shape) == 8 * 2 * 4096 * 4096
    assert profiling.encoder_peak_scores("blocked", shape) == 8 * 2 * 512 * 4096  # O(n · block)
    short = profiling.EncoderShape(n=300, block=512)  # blocks only for inputs longer than the block
    assert profiling.encoder_memory("blocked", short) == profiling.encoder_memory("n×n scores", short)


def test_default_encoder_block_is_the_engines():
    from srsum.engine import DEFAULT_ENCODER_BLOCK

    assert profiling.DEFAULT_ENCODER_BLOCK == DEFAULT_ENCODER_BLOCK


def test_report_puts_the_encoder_beside_cross_attention():
    report = profiling.profile(n=8192, m=1024, seg_size=64, count=False, bandwidth="100", encoder_block=1024)
    encoder = report.encoder
    assert (encoder.n, encoder.heads, encoder.layers, encoder.head_dim, encoder.block) == (8192, 8, 6, 64, 1024)
    rows = {row.label: row for row in report.encoder_rows()}
    assert rows["peak score memory (one layer at a time)"].reduction("blocked") == 1 - 1024 / 8192
    assert rows["computation / encoder"].values["n×n scores"] == 8192 * 8192 * 64 * 48
    parts = {part["part"]: part for part in report.parts()}
    full, srformer = parts["cross-attention, full"], parts["cross-attention, srformer"]
    encoder_mac = parts["encoder self-attention, n×n scores"]["computation"]
    assert full["computation"] == 1024 * 8192 * 64 * 48
    assert srformer["share_of_attention"] == srformer["computation"] / (srformer["computation"] + encoder_mac)
    data = report.to_dict()["encoder"]
    assert data["shape"]["block"] == 1024 and len(data["parts"]) == 5
    assert data["rows"][0]["reduction_vs_nxn_scores"] == {"blocked": 0.0}


def test_cli_prints_the_encoder_table_and_takes_the_block():
    result = invoke("--n", "4096", "--no-count", "--bandwidth", "100", "--encoder-block", "256")
    assert result.exit_code == 0, result.output
    assert "encoder self-attention vs decoder cross-attention" in result.stdout
    assert "blocked (256)" in result.stdout and "which part dominates at n = 4096" in result.stdout


def test_checkpoint_encoder_block_is_the_default(tmp_path):
    fields = {**TINY_T5, "srformer_encoder_block": 128}
    report = profiling.profile(model=write_config(tmp_path, fields), n=1000, m=8, seg_size=8, count=False,
                               bandwidth="100")
    assert report.encoder.block == 128 and report.encoder.heads == 4 and report.encoder.layers == 2


# ------------------------------------------------------------------ the measured run is bounded
def test_measure_skips_what_the_budget_cannot_hold():
    """A 1 s budget at n 65536: full attention's first decode step alone (keys and values of 6 layers) is
    far past it, so that variant is not run; the report says so instead of hanging."""
    report = profiling.profile(n=65536, m=128, seg_size=64, count=False, measure=True, time_budget=1,
                               bandwidth="100", variants=("full",))
    assert report.variants["full"].measured.decode_step_s is None
    assert any(note.startswith("full: not measured") for note in report.notes)


def test_cli_measure_reports_steps_and_repeats(tmp_path):
    config = write_config(tmp_path, TINY_T5)
    result = invoke("--model", config, "--n", "64", "--m", "8", "--seg-size", "8", "--measure", "--time-budget",
                    "20", "--no-count", "--bandwidth", "100")
    assert result.exit_code == 0, result.output
    assert "measured on cpu" in result.stdout and re.search(r"decode timed over \d of 8 steps", result.stdout)
    assert "measured time / step, cross-attention (srsum decoder, eager step)" in result.stdout


def test_a_busy_cpu_is_named_in_the_notes(monkeypatch):
    from srsum.profiling import runner

    cpu = torch.device("cpu")
    monkeypatch.setattr("os.getloadavg", lambda: (50.0, 50.0, 50.0))
    assert "CPU was busy (load 50.0" in runner._busy_cpu(cpu)
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    assert runner._busy_cpu(cpu) is None
