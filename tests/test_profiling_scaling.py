"""srsum profile's counted FLOPs come from probe runs on tiny lengths, scaled exactly: the schedule
arithmetic, the exact solve, and the scaled counts against whole-model counts (a teacher-forced pass, and
m decode steps of batch x beams rows on one state per example, as srsum's decoder shares it) for T5 and
BART in every regime. Tiny random models only."""

import itertools
import json
import warnings
from fractions import Fraction
from itertools import groupby

import pytest
import torch

from srsum import profiling
from srsum.profiling import counted, scaling
from srsum.profiling.scaling import Lengths

TINY_T5 = dict(model_type="t5", vocab_size=64, d_model=64, d_kv=16, num_heads=4, d_ff=64, num_layers=3,
               num_decoder_layers=3, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
TINY_BART = dict(model_type="bart", vocab_size=64, d_model=64, encoder_layers=1, decoder_layers=3,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                 max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                 decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=None)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_config(tmp_path, fields):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(fields))
    return str(path)


# ------------------------------------------------------------------ schedule and exact solve
def test_schedule_groups_match_the_positions_one_by_one():
    for M, G, m in itertools.product(range(1, 14), range(1, 14), range(1, 20)):
        sigma = [min(M - 1, (t * M) // G) for t in range(m)]
        runs = [len(list(group)) for _, group in groupby(sigma)]
        assert profiling.schedule_groups(M, G, m) == (len(runs), max(runs)), (M, G, m)


def test_schedule_groups_at_huge_lengths_are_instant():
    assert profiling.schedule_groups(8192, 2**20, 2**20) == (8192, 128)
    assert profiling.schedule_groups(2**20, 1000, 2**20) == (1001, 2**20 - 1000)


@pytest.mark.parametrize("regime", ["general", "one segment"])
def test_probe_weights_reproduce_any_target_exactly(regime):
    probes, validation = scaling.probe_design(regime)
    size = len(scaling.GENERAL_FEATURES if regime == "general" else scaling.ONE_SEGMENT_FEATURES)
    assert len(probes) == size and not set(probes) & set(validation)
    targets = [Lengths(1024, 128, 64, 128), Lengths(65536, 128, 8, 128), Lengths(1000, 300, 7, 64), *validation]
    if regime == "one segment":
        targets = [Lengths(n, m, n + s, G) for n, m, s, G in [(1024, 128, 0, 128), (65536, 7, 1, 3), (5, 3, 0, 2)]]
    for target in targets:
        weights = scaling.solve_weights(probes, target, regime)
        rebuilt = [sum(w * f for w, f in zip(weights, column))
                   for column in zip(*(scaling.features(p, regime) for p in probes))]
        assert rebuilt == [Fraction(v) for v in scaling.features(target, regime)], target


def test_combine_refuses_a_fractional_flop_count():
    assert scaling.combine([Fraction(1, 2), Fraction(3, 2)], [4, 2]) == 5
    with pytest.raises(scaling.ScalingMismatch):
        scaling.combine([Fraction(1, 3)], [2])


def test_validation_probes_cover_uneven_groups_and_skipped_segments():
    general = scaling.probe_design("general")[1]
    shapes = [(p.segments, p.G, p.m) + profiling.schedule_groups(p.segments, p.G, p.m) for p in general]
    assert any(M < G and L * S > m for M, G, m, L, S in shapes)  # padded slots
    assert any(M > G and m > G for M, G, m, L, S in shapes)      # skipped segments, positions past G
    assert any(p.n % p.s for p in general)                        # a partial last segment


# ------------------------------------------------------------------ scaled = whole-model counts
def shared_state_decoding(model, inputs, beams):
    """m decode steps of the whole model on one cache, ``beams`` query rows per example: the layers keep one
    state per example on the cache, shared by its rows (the engine's own path, built inside the modules)."""
    from transformers import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    tokens = inputs.decoder_tokens.repeat_interleave(beams, 0)

    def run():
        cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        for t in range(tokens.shape[1]):
            model(encoder_outputs=BaseModelOutput(last_hidden_state=inputs.encoder_states),
                  attention_mask=inputs.attention_mask, decoder_input_ids=tokens[:, t:t + 1],
                  past_key_values=cache, use_cache=True)

    return run


def direct_counts(model, shape, schedule_length, d_model):
    """Counted FLOPs of a teacher-forced pass and of m shared-state decode steps, the whole model watched."""
    inputs = profiling.make_inputs(shape, d_model, 64, torch.device("cpu"), "float32")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiling.teacher_forced_run(model, inputs)()  # the engine's once-per-setting warning is not counted
        teacher = profiling.count_cross_attention_flops(model, profiling.teacher_forced_run(model, inputs))
        decode = profiling.count_cross_attention_flops(model, shared_state_decoding(model, inputs, shape.beams))
    return teacher, decode


CASES = [
    # n, m, s, G, batch, beams
    (40, 6, 8, 6, 1, 1),     # M 5 < G 6: groups of 2 and 1, padded slots
    (160, 8, 8, 8, 2, 1),    # M 20 > G 8: skipped segments; batch 2
    (37, 9, 5, 4, 1, 2),     # M 8 > G 4, m > G, a partial last segment; beams 2
    (24, 4, 8, 4, 2, 3),     # batch 2 x beams 3 on two states
    (20, 5, 32, 5, 1, 1),    # s > n: one segment
]


@pytest.mark.parametrize("fields", [TINY_T5, TINY_BART], ids=["t5", "bart"])
def test_scaled_counts_equal_whole_model_counts(tmp_path, fields):
    setup = profiling.prepare(write_config(tmp_path, fields), bandwidth="100")
    dims = profiling.attention_shape(setup.config)
    host = profiling.build_host_model(setup.config, torch.device("cpu"), "float32")
    counters = counted.probe_counters(setup.config, profiling.PROFILED_VARIANTS)
    for variant, (n, m, s, G, batch, beams) in itertools.product(profiling.PROFILED_VARIANTS, CASES):
        shape = profiling.CostShape(n=n, m=m, seg_size=s, heads=dims["heads"], head_dim=dims["head_dim"],
                                    layers=dims["layers"], batch=batch, beams=beams, d_model=dims["d_model"])
        scaled = counted.count_scaled(counters[variant], shape, G)
        model = profiling.make_variant_model(host, variant, s, G)
        teacher, decode = direct_counts(model, shape, G, dims["d_model"])
        assert scaled.probe_layers == 2 and dims["layers"] == 3  # two probe layers stand for three
        assert (scaled.teacher, scaled.decode) == (teacher, decode), (variant, n, m, s, G, batch, beams)


def test_gram_matrix_uses_d_model_not_heads_times_d(tmp_path):
    """A T5 whose d_model (48) is not heads x d_kv (64): the decoder's Gram matrix is D x D with D = 48."""
    fields = {**TINY_T5, "d_model": 48}
    report = profiling.profile(model=write_config(tmp_path, fields), n=40, m=6, seg_size=8, bandwidth="100",
                               variants=("srformer",))
    srformer = report.variants["srformer"]
    assert report.shape.width == 48
    assert srformer.shared_decode_products == {"G=[E 1]ᵀ·[E 1]": 2 * 40 * 48 * 48}
    assert srformer.counted_decode.products == srformer.decode_products_total


class QuadraticCounter:
    """Stands in for a ProbeCounter whose module does O(n²) work: not linear in the features."""

    variant = "srformer"
    layers = [None]

    def count(self, lengths):
        flops = counted.FlopCount(lengths.n * lengths.n, 0, 0)
        return {"teacher": [flops], "decode": [flops]}


def test_work_the_features_do_not_describe_is_caught():
    shape = profiling.CostShape(n=1024, m=128, seg_size=64)
    with pytest.raises(scaling.ScalingMismatch, match="not predicted"):
        counted.count_scaled(QuadraticCounter(), shape, 128)


def test_a_mismatch_leaves_the_counted_rows_empty_with_a_note(monkeypatch):
    def mismatch(counter, shape, schedule_length):
        raise scaling.ScalingMismatch(f"{counter.variant}, teacher: the probe at n 8 is not predicted by the others")

    monkeypatch.setattr("srsum.profiling.runner.count_scaled", mismatch)
    report = profiling.profile(n=256, m=16, seg_size=16, bandwidth="100", variants=("segmented",))
    assert report.variants["segmented"].counted_teacher_forced is None and report.counting is None
    assert any(note.startswith("counted FLOPs left out: segmented") for note in report.notes)
