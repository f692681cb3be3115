"""The device's side of a row's accounting (``usage.py`` is torch-free and takes these as probes).

Peak device memory comes from torch's own allocator statistics (what the row's tensors held, the
CUDA context not included); utilisation from NVML through ``nvidia-ml-py`` (the ``gpu`` extra),
the library ``nvidia-smi`` itself reads. Without a GPU, or without NVML, each probe says None and
the record's fields stay null: never a made-up figure.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


def cuda_peak_bytes(device: str) -> int | None:
    """Bytes torch held at most on ``device`` since the previous call (then reset); None off CUDA."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    peak = int(torch.cuda.max_memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    return peak


@functools.cache
def _nvml() -> Any:
    """The NVML module, initialised once; None when nvidia-ml-py or the driver is missing."""
    try:
        import pynvml  # import cost: optional (the gpu extra), and only on a GPU
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - not installed, no driver, no permission: no readings
        return None
    return pynvml


@functools.cache
def _nvml_handle(device: str) -> Any:
    """NVML's handle of torch's ``device``, matched by UUID: NVML numbers every GPU of the node,
    torch only those CUDA_VISIBLE_DEVICES (SLURM's grant) leaves visible."""
    nvml = _nvml()
    if nvml is None:
        return None
    index = torch.device(device).index or 0
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
    try:
        if uuid:
            return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # noqa: BLE001 - an unknown UUID form: no handle rather than the wrong GPU
        return None
    return None


def nvml_utilisation(device: str) -> float | None:
    """The GPU's utilisation (% of the last sample period with a kernel running), or None."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    handle = _nvml_handle(device)
    if handle is None:
        return None
    return float(_nvml().nvmlDeviceGetUtilizationRates(handle).gpu)
