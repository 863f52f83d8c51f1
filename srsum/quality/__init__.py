"""The quality study (GitHub issue 6): what SRformer's recurrent attention recovers from segmentation.

``tasks`` holds the tasks (synthetic ``lookup`` and ``recall``, the default pair, and real-text
``entities``), ``model`` the small T5 and BART and the bridge to :func:`srsum.engine.convert`, ``train`` the shared training and scoring, ``study`` the
sweep and its bad-input checks, ``report`` docs/RESULTS.md and its plot. The CLI is
``benchmarks/quality.py``.
"""

from srsum.quality.study import StudyConfig, plan, run_study, smoke_config, validate

__all__ = ["StudyConfig", "plan", "run_study", "smoke_config", "validate"]
