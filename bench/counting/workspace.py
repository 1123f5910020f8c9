"""cuBLAS's workspaces in a step's peak CUDA memory, as torch sizes and holds them.

cuBLAS workspaces: torch gives every cuBLAS handle, one per thread, a workspace from the caching
allocator the first time the thread calls cuBLAS on a stream, and keeps it (so it counts in
`max_memory_allocated`; bench.execute.prepare drops it between cells). Every model here calls
cuBLAS (its classifier at least), so a step holds one workspace per thread that runs its matmuls:
inference one, train and finetune two, since autograd runs a CUDA backward on its own device
thread (`cublas_workspaces`). Its size is torch's choice (aten/src/ATen/cuda/CublasHandlePool.cpp,
`cublas_workspace_bytes`): CUBLAS_WORKSPACE_CONFIG's ":SIZE:COUNT" pairs (SIZE in KiB) when set,
else 32 MiB from Hopper on (sm90; assumed for newer GPUs too, as recent torch gives Blackwell) and
":4096:2:16:8" (8 MiB + 128 KiB) before. It depends on the GPU: a cell on a CUDA device present
here is predicted for that device's compute capability; a prediction with no such device (a CPU
cell, `rvbench memory`, the card table) assumes Hopper, `DEFAULT_CAPABILITY`, which on an older
card overstates the peak by 24 MiB per workspace. cuBLASLt shares the cuBLAS workspace (recent
torch's default, TORCH_CUBLASLT_UNIFIED_WORKSPACE); builds that give it its own add up to 1 MiB
per handle (CUBLASLT_WORKSPACE_SIZE), not modelled.
"""

from __future__ import annotations

import os
import re

MB = 2**20
# torch's cuBLAS workspace per handle: from Hopper on, and before it (":4096:2:16:8").
CUBLAS_WORKSPACE_HOPPER = 32 * MB
CUBLAS_WORKSPACE_OLDER = (4096 * 2 + 16 * 8) * 2**10
DEFAULT_CAPABILITY = (9, 0)  # assumed where no CUDA device says: Hopper


def cublas_workspace_bytes(capability: tuple[int, int], config: str | None) -> int:
    """Bytes of one cuBLAS workspace as torch sizes it on a GPU of compute `capability`, where
    `config` is CUBLAS_WORKSPACE_CONFIG (None: unset): the sum of SIZE KiB x COUNT over its
    ":SIZE:COUNT" pairs, as torch parses it; a value without one gets the default, as in torch."""
    pairs = re.findall(r":([0-9]+):([0-9]+)", config or "")
    if pairs:
        return sum(int(size) * 2**10 * int(count) for size, count in pairs)
    return CUBLAS_WORKSPACE_HOPPER if capability >= (9, 0) else CUBLAS_WORKSPACE_OLDER


def cublas_workspaces(mode: str, capability: tuple[int, int]) -> list[int]:
    """The bytes of each cuBLAS workspace a step of `mode` holds on a GPU of `capability`, with this
    process's CUBLAS_WORKSPACE_CONFIG (the worker inherits it): one for the calling thread, and one
    more for autograd's device thread in train and finetune (see the module docstring)."""
    threads = 1 if mode == "inference" else 2
    return [cublas_workspace_bytes(capability, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))] * threads
