"""Fine-tuning T5/BART with SRformer cross-attention: the library behind ``srsum train``.

:func:`train` converts a pretrained model (``srsum.engine.load_model`` with ``attention``, ``seg_size``
and ``schedule_length``; G defaults to the max target length), trains it with AdamW and a linear
schedule under ``accelerate`` (one process, or data-parallel over the processes of ``accelerate launch`` /
``torchrun``: see :mod:`srsum.training.loop` and :mod:`srsum.training.batches`), evaluates
validation loss and ROUGE after every epoch, and writes checkpoints atomically (see
:mod:`srsum.checkpoints`). ``resume=True`` continues the last complete checkpoint of the run folder to
the same total step count, with the settings recorded in its ``trainer_state.json``.

A new run converts the plain model with ``w_init`` (default calibrated: W scaled per layer so that the
recurrent term is ``memory_ratio`` times the local one) on its first training batches and with the products'
``clamp`` ("off" or a bound; None: the family's); a resumed run loads its checkpoint as saved.
Per decoder layer, the recurrent/local norm ratio, the RAF firing rate and, with a clamp, the share of P
beyond it are reported at the start and after every epoch (``srsum.engine.calibration.memory_report``),
printed as one ``memory ...`` line (a saturating clamp is warned about once) and saved under ``memory`` in
the log history and the metrics.

Ctrl-C (KeyboardInterrupt) stops training cleanly: :class:`TrainingInterrupted` is raised, naming the
last complete checkpoint, which stays intact.
"""

from srsum.training.config import (BEST_METRICS, DEFAULT_ATTENTION, DEFAULT_SEG_SIZE, TrainingConfig,
                                   TrainingInterrupted, TrainResult, default_run_name, find_resume_dir,
                                   resumed_config)
from srsum.training.evaluation import memory_line
from srsum.training.loop import MEMORY_EXAMPLES, train

__all__ = ["BEST_METRICS", "DEFAULT_ATTENTION", "DEFAULT_SEG_SIZE", "MEMORY_EXAMPLES", "TrainResult", "TrainingConfig",
           "TrainingInterrupted", "default_run_name", "find_resume_dir", "memory_line", "resumed_config", "train"]
