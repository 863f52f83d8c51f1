"""Cross-attention cost profiler: analytic, counted and measured, for full, segmented and srformer.

Everything here returns data; nothing prints. ``srsum profile`` (srsum/cli/profile.py) renders it.
The package: ``analytic`` (closed forms and option checks), ``scaling`` (exact scaling of probe counts),
``counted`` (FLOP counting), ``measured`` (devices, bandwidth, timed runs within a budget, live-bytes
peak memory), ``models`` (the random models those run), ``report`` (report dataclasses, table rows,
JSON, plot) and ``runner`` (profile and sweep). This module re-exports their public names, so
``from srsum import profiling; profiling.profile(...)`` works.

Three kinds of figures, side by side for each variant:

* **Analytic** — SPEC section 10 (paper Table 1), per head and decoder layer for one example, in the
  paper's units (multiply-accumulates for computation, stored values for memory). The terms the
  paper's table leaves out are kept apart: ``q·R`` = m d² and ``RAF + W`` = M d³ + M d².
  Whole-decoder figures multiply by heads x layers x batch. Per decode step a head-layer reads
  2 n d values (full), 2 s d (segmented) or 2 s d + d² + d (srformer); times heads, layers, batch
  (an example's beams read its one state together) and bytes per value, divided by the memory
  bandwidth, that is the floor a step cannot beat.
* **Counted** — FLOPs of the real cross-attention modules of a model, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` over one teacher-forced pass and over m decode
  steps, split into the attention's matrix products, its other work and the host model's q/k/v/o
  projections (identical for all variants). They come from a few dozen probe runs on tiny lengths,
  scaled exactly to the requested n, m, layers, batch and beams (``scaling.py`` says why that is
  exact, and two further probes are checked each time), so counting takes about a second at any
  length; at the paper's settings the counted products equal the analytic ones to the digit. The
  whole-model count (``count_cross_attention_flops`` over a teacher-forced pass and over m decode steps
  of batch x beams rows on one state per example) stays as the yardstick the tests hold the scaled one
  to. Decode steps are counted as srsum's decoder runs them: the state is built and stepped once per
  example and shared by its beams; only the query rows' products (q·Kᵀ, A·V, q·R) grow with the beams. FlopCounterMode only knows matrix
  products, convolutions and CUDA attention kernels; :data:`ELEMENTWISE_FLOPS` lists what we add:

  ====================================================================  ==============================
  op (aten, in-place forms too)                                         FLOPs counted
  ====================================================================  ==============================
  add sub mul div neg abs relu threshold clamp clamp_min clamp_max      1 per output element
  where masked_fill gt ge lt le eq ne maximum minimum exp log sqrt
  rsqrt reciprocal pow sigmoid tanh sign heaviside
  addcmul addcdiv lerp                                                  2 per output element
  _softmax _log_softmax _safe_softmax                                   5 per output element
                                                                        (max, subtract, exp, sum, divide)
  sum mean amax amin max min prod cumsum logsumexp                      1 per input element
  linalg_vector_norm norm                                               2 per input element
  var std                                                               3 per input element
  fused scaled-dot-product attention (CPU and CUDA kernels)             its two products (matrix
                                                                        products) + 5 per score (other)
  ====================================================================  ==============================

  Data movement (copy, cat, index, gather, view, expand) counts zero.
* **Measured** (opt-in) — time per decode step (whole model, and inside the cross-attention modules)
  and peak memory above the model's own weights, on the chosen device, within a time budget. The decode
  runs are srsum's decoder (``srsum.decoding.search``: one state per example shared by its beams, in the
  step mode ``srsum summarize`` picks for the device, which the measured rows name); they stop when their
  share of the budget runs out (the report says how many steps and repeats ran), and a
  variant whose first step or memory would not fit is skipped with a note. On CUDA the peak comes
  from the caching allocator; elsewhere from :class:`LiveBytesTracker`, which adds up the storages
  that operators create while they are alive.
* **Encoder** — the encoder's self-attention beside the cross-attention (analytic): Hugging Face's
  n x n scores per head and layer against a blocked encoder whose queries run in blocks of b rows
  (``srsum.engine``'s ``srformer_encoder_block``): the same work, O(n · b) score memory.

The counted and measured figures run a model with random weights whose decoder cross-attention is
converted by ``srsum.engine.convert``; the encoder is not run (random encoder states stand in for
its output), because only the decoder's cross-attention differs between the variants.
"""

from srsum.profiling.analytic import (  # noqa: F401
    CostShape, DEFAULT_ENCODER_BLOCK, DTYPE_NAMES, ENCODER_KINDS, EncoderShape, LIMITS, MAX_LENGTH,
    PROFILED_VARIANTS, ROW_DECODE_PRODUCTS, analytic_computation, analytic_memory, analytic_product_flops,
    analytic_shared_decode_flops, bytes_per_value, decode_values_read, encoder_computation, encoder_memory,
    encoder_peak_scores, encoder_product_flops, left_out_terms, raf_steps, reduction, require_positive_int,
    resolve_dtype_name, schedule_groups, validate_lengths, whole_decoder_products,
)
from srsum.profiling.scaling import (  # noqa: F401
    GENERAL_FEATURES, Lengths, ONE_SEGMENT_FEATURES, ScalingMismatch, VALIDATION_PROBES, combine, features,
    probe_design, solve_weights,
)
from srsum.profiling.counted import (  # noqa: F401
    BUCKETS, CROSS_ATTENTION_NAMES, ELEMENTWISE_FLOPS, FUSED_ATTENTION_OPS, FlopCount, LayerCounter, PASSES,
    PROJECTION_NAMES, ProbeCounter, ScaledCount, count_cross_attention_flops, count_scaled,
    cross_attention_modules, flop_mappings, probe_counters, projection_names,
)
from srsum.profiling.measured import (  # noqa: F401
    BANDWIDTH_NAMES_GBPS, Budget, CrossAttentionTimer, GPU_BANDWIDTH_GBPS, LiveBytesTracker, MeasurePlan, PHASES,
    available_memory, gpu_bandwidth_gbps, matmul_rate, measure_copy_bandwidth_gbps, measure_peak_bytes,
    measure_plan, measure_variant, parse_bandwidth, resolve_bandwidth, resolve_device, timed,
)
from srsum.profiling.models import (  # noqa: F401
    DEFAULT_MODEL_NAME, DEFAULT_MODEL_SHAPES, PROBE_SIZES, ProfileInputs, ShapesConfig, attention_shape,
    build_host_model, config_encoder_block, decode_run, decoder_step, engine_available, host_model_type, load_profile_config,
    make_inputs, make_variant_model, probe_host_model, teacher_forced_run,
)
from srsum.profiling.report import (  # noqa: F401
    Measured, ProfileReport, ReportRow, SweepReport, VARIANT_COLOURS, VariantProfile, plot_sweep,
    write_profile_json, write_sweep_json, write_sweep_outputs,
)
from srsum.profiling.runner import (  # noqa: F401
    DEFAULT_SWEEP_M, DEFAULT_SWEEP_N, DEFAULT_TIME_BUDGET, MAX_TIME_BUDGET, ProfileSetup, analytic_profile,
    check_time_budget, prepare, profile, profile_with, sweep, sweep_lengths,
)
