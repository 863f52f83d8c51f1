"""Which number format a model runs in: what this CPU multiplies fast, and ``--dtype auto``.

bfloat16 halves the bytes every weight read costs and, on a CPU with bfloat16 dot products (Intel AMX,
or AVX512-BF16 on Intel Cooper Lake and later and AMD Zen 4 and later), runs matrix products several
times faster than float32. Without those instructions oneDNN emulates bfloat16 and it is slower than
float32, so ``auto`` asks the CPU at run time (torch's own checks, which are oneDNN's, else the kernel's
flags) instead of guessing from the model name. The engine keeps the softmax, the products P, ν and the
RAF membrane in float32 whatever the weights are (SPEC section 5).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .errors import UsageError

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16", "int8")
ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


@dataclass(frozen=True)
class CpuFeatures:
    """The instruction sets that decide the number format (True where the CPU and the OS allow them)."""

    name: str
    avx512_bf16: bool = False
    amx_bf16: bool = False
    vnni: bool = False  # int8 dot products (AVX512-VNNI or AVX-VNNI): fbgemm's int8 kernels use them
    amx_int8: bool = False

    @property
    def fast_bfloat16(self) -> bool:
        return self.amx_bf16 or self.avx512_bf16

    def describe(self) -> str:
        """"AMX-BF16, AVX512-BF16, VNNI" or "none of AMX, AVX512-BF16, VNNI"."""
        names = [label for label, present in (("AMX-BF16", self.amx_bf16), ("AMX-INT8", self.amx_int8),
                                              ("AVX512-BF16", self.avx512_bf16), ("VNNI", self.vnni)) if present]
        return ", ".join(names) if names else "none of AMX, AVX512-BF16, VNNI"


def _cpuinfo() -> tuple[str, set[str]]:
    """The first CPU's model name and flags from /proc/cpuinfo (empty where there is none)."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def _torch_says(check: str) -> bool | None:
    """torch's answer for ``torch.cpu._is_<check>_supported`` (None where this torch has no such check)."""
    function = getattr(torch.cpu, f"_is_{check}_supported", None)
    try:
        return None if function is None else bool(function())
    except RuntimeError:
        return None


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU, asked once: torch's checks first (what oneDNN will use), /proc/cpuinfo else."""
    import platform

    name, flags = _cpuinfo()

    def has(check: str, *flag_names: str) -> bool:
        answer = _torch_says(check)
        return answer if answer is not None else any(flag in flags for flag in flag_names)

    amx = has("amx_tile", "amx_tile") and ("amx_bf16" in flags or not flags)
    return CpuFeatures(name=name or platform.processor() or platform.machine(),
                       avx512_bf16=has("avx512_bf16", "avx512_bf16"), amx_bf16=amx,
                       vnni=has("vnni", "avx512_vnni", "avx_vnni"),
                       amx_int8=has("amx_tile", "amx_tile") and ("amx_int8" in flags or not flags))


def canonical_dtype_name(name: str | None) -> str:
    """The dtype's name as DTYPE_NAMES spells it (None: auto); a one-line UsageError for anything else."""
    key = "auto" if name is None else ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DTYPE_NAMES:
        raise UsageError(f"--dtype: unknown dtype {name!r}; use auto, float32, bfloat16, float16 or int8 (CPU)")
    return key


def auto_dtype(device: torch.device, features: CpuFeatures | None = None) -> torch.dtype:
    """``auto``: bfloat16 on a CPU that computes it natively and on a CUDA GPU that supports it, else float32."""
    if device.type == "cpu":
        return torch.bfloat16 if (features or cpu_features()).fast_bfloat16 else torch.float32
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(name: str | None, device: torch.device | str = "cpu",
                  features: CpuFeatures | None = None) -> torch.dtype:
    """The torch dtype the weights load in; ``int8`` loads float32 (its linears are quantised afterwards)."""
    key = canonical_dtype_name(name)
    if key == "auto":
        return auto_dtype(torch.device(device), features)
    return torch.float32 if key == "int8" else getattr(torch, key)


def why(name: str | None, dtype: torch.dtype, device: torch.device | str = "cpu",
        features: CpuFeatures | None = None) -> str:
    """What a run's closing note says about its number format, e.g. "bfloat16 (auto: AVX512-BF16)"."""
    key = canonical_dtype_name(name)
    label = "int8" if key == "int8" else str(dtype).removeprefix("torch.")
    if key != "auto":
        return label
    if torch.device(device).type == "cpu":
        return f"{label} (auto: this CPU has {(features or cpu_features()).describe()})"
    return f"{label} (auto)"


def cast_model(model, name: str | None, device: torch.device | str = "cpu"):
    """``model`` in the format ``name`` says (int8: float32 with its linears quantised); for benchmarks and
    tests that build a model themselves (``load_summarizer`` does the same for checkpoints)."""
    model = model.to(resolve_dtype(name, device))
    if canonical_dtype_name(name) == "int8":
        from .quantization import quantize_for_decoding

        quantize_for_decoding(model)
    return model
