"""srsum profile: SPEC section 10's figures, counted FLOPs against the analytic ones, the sweep's files
and the CLI's one-line errors. Tiny random models only (nothing downloaded)."""

import json
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
    return profiling.profile(model=config, n=64, m=16, seg_size=8, bandwidth="100")


def _within(counted, analytic, tolerance=0.05):
    return abs(counted - analytic) <= tolerance * analytic


def test_counted_products_match_analytic(tiny_report):
    shape = tiny_report.shape
    assert (shape.heads, shape.head_dim, shape.layers) == (4, 16, 2)
    for variant, result in tiny_report.variants.items():
        teacher, decode = sum(result.products.values()), sum(result.decode_products.values())
        assert _within(result.counted_teacher_forced.products, teacher * shape.head_layers), variant
        assert _within(result.counted_decode.products, decode * shape.decode_rows), variant


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


def test_measured_figures_are_present(tiny_report):
    for result in tiny_report.variants.values():
        measured = result.measured
        assert measured.decode_step_s > 0 and 0 < measured.cross_attention_step_s <= measured.decode_step_s
        assert measured.decode_peak_bytes > 0 and measured.teacher_forced_peak_bytes > 0


def test_bart_counts_match_analytic(tmp_path):
    config = write_config(tmp_path, TINY_BART)
    report = profiling.profile(model=config, n=48, m=8, seg_size=16, bandwidth="100", measure=False,
                               variants=("full", "srformer"))
    assert report.shape.head_dim == 16
    assert "P_σ·Wᵀ" in report.variants["srformer"].products  # BART clamps: P_σ first, then d³ per step
    for result in report.variants.values():
        analytic = sum(result.products.values()) * report.shape.head_layers
        assert _within(result.counted_teacher_forced.products, analytic), result.variant
        analytic = sum(result.decode_products.values()) * report.shape.decode_rows
        assert _within(result.counted_decode.products, analytic), result.variant


@pytest.mark.parametrize("tiny", [TINY_T5, TINY_BART])
def test_decode_counts_match_analytic_when_segments_are_skipped(tmp_path, tiny):
    """M > G: the decoder projects only the segments it visits and takes P from the Gram matrix."""
    config = write_config(tmp_path, tiny)
    report = profiling.profile(model=config, n=160, m=8, seg_size=8, bandwidth="100", measure=False,
                               variants=("full", "srformer"))
    srformer, full = report.variants["srformer"], report.variants["full"]
    assert "W_k·G" in srformer.decode_products and "W_k·G" not in srformer.products
    analytic = sum(srformer.decode_products.values()) * report.shape.decode_rows
    assert _within(srformer.counted_decode.products, analytic)
    assert srformer.counted_decode.projections < full.counted_decode.projections / 2  # 8 of 20 segments


def test_checkpoint_folder_is_profiled_from_its_config(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    fields = {k: v for k, v in TINY_T5.items() if k != "model_type"}
    T5ForConditionalGeneration(T5Config(**fields)).save_pretrained(tmp_path / "ckpt")
    report = profiling.profile(model=str(tmp_path / "ckpt"), n=32, m=4, seg_size=8, bandwidth="100",
                               measure=False, variants=("full",))
    assert report.model.startswith("checkpoint") and report.shape.heads == 4
    full = report.variants["full"]
    assert full.counted_teacher_forced.products == sum(full.products.values()) * report.shape.head_layers


# ------------------------------------------------------------------ sweep files
def test_sweep_writes_readable_json_and_png(tmp_path):
    config = write_config(tmp_path, TINY_T5)
    report = profiling.sweep(over="m", lengths=[4, 8], model=config, seg_size=8, bandwidth="100")
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


def test_format_count_keeps_paper_numbers_exact():
    assert format_count(8_388_608) == "8,388,608"
    assert format_count(1_610_612_736) == "1.611 G"
