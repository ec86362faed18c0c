"""One place that asks Accelerate which process we are (single process when not launched)."""

from __future__ import annotations


def process_state():
    """Accelerate's PartialState; on machines without CUDA, processes talk over gloo on the CPU.

    Under ``accelerate launch`` (or torchrun) every process gets its rank and device from
    it; in a plain run it is one process of one.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def segmenter_device(state, device: str):
    """``auto`` under several processes means this process's own device."""
    return state.device if device == "auto" and state.num_processes > 1 else device
