"""Exact scaling of counted FLOPs from small probe runs to any (n, m, s, G). Pure Python, no torch.

Every operator the cross-attention runs has a FLOP count that is a product of its tensor's sizes, and
those sizes are built from a handful of lengths: n (encoder rows), the padded rows M·s, the segment
size s, the decoder positions m, and the segment schedule's L groups (RAF steps) of at most S positions
(teacher-forced, positions are laid out L x S). So the FLOPs one decoder layer spends on one example,
in a teacher-forced pass or over m decode steps, are a linear combination of the *features*

    general (M >= 2):  1, m, n, M·s, s, m·s, m·n, L, L·s, L·S, L·S·s
    one segment (M = 1, the segment is all n keys):  1, m, n, m·n

with coefficients fixed by the model's shapes (heads, d, d_model) and the variant. Counting probes whose
feature vectors span that space (tiny n, m, s, G) gives the coefficients exactly (rational arithmetic),
and so the count at the requested lengths. Two more probes are predicted before they are counted;
a mismatch means the implementation does work the features do not describe, and no scaled figure is
given (:class:`ScalingMismatch`). Layers, batch and beams scale on top of that (see ``counted.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

from srsum.profiling.analytic import schedule_groups

GENERAL_FEATURES = ("1", "m", "n", "M·s", "s", "m·s", "m·n", "L", "L·s", "L·S", "L·S·s")
ONE_SEGMENT_FEATURES = ("1", "m", "n", "m·n")
# Predicted before they are counted: unequal groups with padded slots (M < G); skipped segments and a
# position past G (M > G, m > G); partial last segments; one segment of exactly n = s keys.
VALIDATION_PROBES = {
    "general": ((8, 4, 3, 4), (10, 4, 3, 3)),
    "one segment": ((7, 4, 9, 3), (5, 3, 5, 2)),
}


class ScalingMismatch(Exception):
    """A validation probe's count differs from the scaled prediction."""


@dataclass(frozen=True)
class Lengths:
    """The lengths one run depends on: n encoder rows, m decoder positions, segment size s, schedule G."""

    n: int
    m: int
    s: int
    G: int

    @property
    def segments(self) -> int:
        return -(-self.n // self.s)

    @property
    def regime(self) -> str:
        return "one segment" if self.segments == 1 else "general"


def features(lengths: Lengths, regime: str | None = None) -> tuple[int, ...]:
    """The feature vector of ``lengths`` in ``regime`` (default: its own; full attention, which has no
    segments, is always counted in the "one segment" regime)."""
    n, m, s = lengths.n, lengths.m, lengths.s
    if (regime or lengths.regime) == "one segment":
        return (1, m, n, m * n)
    M = lengths.segments
    L, S = schedule_groups(M, lengths.G, m)
    return (1, m, n, M * s, s, m * s, m * n, L, L * s, L * S, L * S * s)


def _candidates(regime: str) -> list[Lengths]:
    """Small probe lengths of one regime, cheapest first (n x m, then n, m, s, G)."""
    found = set()
    for m in (1, 2, 3, 4, 5, 6, 8):
        for G in (1, 2, 3, 4, 5, 6, 8, 12):
            if regime == "one segment":
                for n in (1, 2, 3, 5, 8):
                    found.add(Lengths(n, m, n + 1, G))
                continue
            for s in (2, 3, 4):
                for M in (2, 3, 4, 5):
                    for r in range(1, s + 1):
                        found.add(Lengths((M - 1) * s + r, m, s, G))
    return sorted(found, key=lambda x: (x.n * x.m, x.n, x.m, x.s, x.G))


def _reduce(row: list[Fraction], basis: list[tuple[int, list[Fraction]]]) -> list[Fraction]:
    """``row`` minus its projection on the echelon ``basis`` (pivot column, row with 1 at the pivot)."""
    row = list(row)
    for pivot, base in basis:
        if row[pivot]:
            factor = row[pivot]
            row = [a - factor * b for a, b in zip(row, base)]
    return row


@lru_cache(maxsize=None)
def probe_design(regime: str) -> tuple[tuple[Lengths, ...], tuple[Lengths, ...]]:
    """(probes whose features span the regime's space, validation probes): the cheapest spanning set of
    candidates, and the fixed :data:`VALIDATION_PROBES`."""
    size = len(ONE_SEGMENT_FEATURES if regime == "one segment" else GENERAL_FEATURES)
    basis: list[tuple[int, list[Fraction]]] = []
    chosen = []
    for candidate in _candidates(regime):
        if len(chosen) == size:
            break
        row = _reduce([Fraction(v) for v in features(candidate, regime)], basis)
        pivot = next((i for i, v in enumerate(row) if v), None)
        if pivot is None:
            continue
        row = [v / row[pivot] for v in row]
        basis = [(p, [a - b[pivot] * c for a, c in zip(b, row)]) for p, b in basis]
        basis.append((pivot, row))
        chosen.append(candidate)
    if len(chosen) < size:  # pragma: no cover - the candidate grid is fixed and spans both regimes
        raise RuntimeError(f"probe candidates do not span the {regime} features")
    return tuple(chosen), tuple(Lengths(*lengths) for lengths in VALIDATION_PROBES[regime])


def solve_weights(probes: Sequence[Lengths], target: Lengths, regime: str) -> list[Fraction]:
    """Weights w with features(target) = Σ w_i features(probe_i): then any quantity that is linear in the
    features is, at ``target``, Σ w_i (its value at probe_i). Exact (Gauss-Jordan over Fractions)."""
    rows = [[Fraction(v) for v in features(p, regime)] for p in probes]
    size = len(rows)
    goal = [Fraction(v) for v in features(target, regime)]
    if len(goal) != size:
        raise ValueError("target and probes are in different regimes")
    # solve Aᵀ w = goal, A the probes' feature rows: augment Aᵀ with goal
    matrix = [[rows[j][i] for j in range(size)] + [goal[i]] for i in range(size)]
    for col in range(size):
        pivot = next(r for r in range(col, size) if matrix[r][col])
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        head = matrix[col][col]
        matrix[col] = [v / head for v in matrix[col]]
        for r in range(size):
            if r != col and matrix[r][col]:
                factor = matrix[r][col]
                matrix[r] = [a - factor * b for a, b in zip(matrix[r], matrix[col])]
    return [matrix[i][size] for i in range(size)]


def combine(weights: Sequence[Fraction], values: Sequence[int]) -> int:
    """Σ w_i values_i, which must be a whole number (FLOPs)."""
    total = sum((w * v for w, v in zip(weights, values)), Fraction(0))
    if total.denominator != 1:
        raise ScalingMismatch(f"scaled count {total} is not a whole number")
    return int(total)
