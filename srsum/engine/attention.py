"""Compatibility re-exports: the layer lives in layer.py, the training path in parallel.py, segments in segments.py, the decode state in state.py."""

from .layer import SRformerCrossAttention, key_padding_mask
from .parallel import (ParallelTerms, parallel_attention, parallel_terms, recurrent_from_inputs, recurrent_inputs,
                       recurrent_sequence)
from .segments import EncoderRows, EncoderSegments, ProjectedSegments, warn_if_segments_unvisited
from .state import (ENCODER_ROWS, RAF_WINDOW, STATE_ATTRIBUTE, DecodeState, decoding_states, held_tensors,
                    prepare_states)

__all__ = [
    "SRformerCrossAttention", "key_padding_mask", "ParallelTerms", "parallel_attention", "parallel_terms",
    "recurrent_from_inputs", "recurrent_inputs", "recurrent_sequence", "EncoderRows", "EncoderSegments",
    "ProjectedSegments", "warn_if_segments_unvisited", "ENCODER_ROWS", "RAF_WINDOW", "STATE_ATTRIBUTE", "DecodeState",
    "decoding_states", "held_tensors", "prepare_states",
]
