"""Helpers the adapter tests share: stock diffusers with LoRAs loaded the way its documentation shows."""

from __future__ import annotations


def with_loras(pipe, loras: list[tuple[str, float]], prepare=None):
    """``pipe`` with ``loras`` loaded (``load_lora_weights`` + ``set_adapters`` at their weights), then whatever
    ``prepare(pipe)`` adds; progress bars off."""
    pipe.set_progress_bar_config(disable=True)
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"a{i}")
    if loras:
        pipe.set_adapters([f"a{i}" for i in range(len(loras))], adapter_weights=[w for _, w in loras])
    if prepare is not None:
        prepare(pipe)
    return pipe
