"""fvcore's FLOP count, taken as fvcore defines it, and a plain account of why it differs.

fvcore traces a real forward with torch.jit (it cannot trace meta tensors), so this is the only
counter that computes. It is kept cheap: batch 1, no_grad, oneDNN off, weights allocated without
random initialisation (zeroed; values do not change the count), and results are cached on disk
(~/.cache/rvbench/fvcore.json, or under $XDG_CACHE_HOME) keyed by arch, impl, input size and the
versions of torch, fvcore and the implementing library (for rv, a hash of its source), so a
changed model or library is counted afresh.

fvcore counts 1 per multiply-add (its "flops" are MACs), adds norm layers and pools, and has no
handler for fused attention kernels: aten::scaled_dot_product_attention (timm, rv) and
aten::_native_multi_head_attention (torchvision's nn.MultiheadAttention inference fast path,
taken under eval + no_grad on a real CPU), whose FLOPs it silently drops.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import warnings
from pathlib import Path

import torch

from bench.models import ModelEntry

# fvcore operator names that are multiply-accumulates (the analytic counter's scope); the rest of
# what fvcore counts are norms and pools.
_MATMUL_OPS = {"conv", "linear", "addmm", "bmm", "matmul", "mm", "einsum"}


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rvbench" / "fvcore.json"


def _library_fingerprint(impl: str) -> str:
    if impl != "rv":
        return importlib.metadata.version(impl)
    import rv_models

    digest = hashlib.sha1()
    for source in sorted(Path(rv_models.__file__).parent.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def _cache_key(entry: ModelEntry, image_size: int) -> str:
    versions = [importlib.metadata.version(p) for p in ("torch", "fvcore")]
    return "|".join([entry.arch, entry.impl, str(image_size), *versions, _library_fingerprint(entry.impl)])


NOT_INSTALLED = "fvcore is not installed here (pip install fvcore): no fvcore count"


def fvcore_installed() -> bool:
    """Whether fvcore can be imported: a machine without it (a GPU node's own Python) still counts
    with the analytic and FlopCounterMode counters, and says why fvcore's column is empty."""
    return importlib.util.find_spec("fvcore") is not None


def fvcore_count(entry: ModelEntry, image_size: int) -> dict:
    """fvcore's result for one entry (from the disk cache when it has this exact configuration).

    Keys: total (fvcore's number as-is, 1 per multiply-add), by_operator, unsupported (operator
    fvcore has no handler for -> how often it ran), uncalled (modules fvcore saw no call of).
    """
    path = _cache_path()
    cache = json.loads(path.read_text()) if path.exists() else {}
    key = _cache_key(entry, image_size)
    if key not in cache:
        cache[key] = _analyse(entry, image_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: concurrent runs never read a torn file
    return cache[key]


def _analyse(entry: ModelEntry, image_size: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notice on import
        from fvcore.nn import FlopCountAnalysis

    with torch.device("meta"):
        model = entry.build(image_size=image_size)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            tensor.zero_()
        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, image_size, image_size))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation and oneDNN TF32 notices
            # oneDNN generates kernels for every new conv shape, which costs more than the
            # convolutions themselves here; the traced op names (aten::_convolution) are the same.
            with torch.backends.mkldnn.flags(enabled=False):
                total = analysis.total()
    return {
        "total": int(total),
        "by_operator": {op: int(n) for op, n in sorted(analysis.by_operator().items())},
        "unsupported": {op: int(n) for op, n in sorted(analysis.unsupported_ops().items())},
        "uncalled": sorted(analysis.uncalled_modules()),
    }


def fvcore_split(fv: dict) -> tuple[int, int]:
    """(multiply-accumulates, norm/pool extras) within fvcore's total."""
    macs = sum(n for op, n in fv["by_operator"].items() if op in _MATMUL_OPS)
    return macs, fv["total"] - macs


def fvcore_note(fv: dict, macs_analytic: int) -> str:
    """One paragraph saying how fvcore's total relates to the analytic MACs, with the amounts."""
    macs, extra = fvcore_split(fv)
    missing = macs_analytic - macs
    parts = [
        f"fvcore counts 1 per multiply-add, so compare {fv['total'] / 1e9:.3f} G with GMACs "
        f"(analytic {macs_analytic / 1e9:.3f})."
    ]
    dropped = [f"{op} x{n}" for op, n in fv["unsupported"].items() if "attention" in op]
    if missing:
        cause = f"it has no handler for {', '.join(dropped)}" if dropped else "ops it does not count"
        if any("_native_multi_head_attention" in op for op in dropped):
            cause += " (nn.MultiheadAttention's inference fast path: QK^T, AV and the qkv/out projections)"
        elif dropped:
            cause += " (attention QK^T and AV)"
        parts.append(f"It misses {missing / 1e9:.3f} GMACs: {cause}.")
    else:
        parts.append("Its conv/linear/matmul MACs equal the analytic count.")
    if extra:
        extra_ops = [op for op in fv["by_operator"] if op not in _MATMUL_OPS]
        parts.append(f"It adds {extra / 1e9:.3f} G for {', '.join(extra_ops)}, which analytic does not count.")
    return " ".join(parts)
