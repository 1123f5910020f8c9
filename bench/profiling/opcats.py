"""Operator categories: which kind of work an aten op or a GPU kernel name stands for.

The profile splits device time into a few categories so that two implementations of one network
can be compared at a glance ("this one spends 15% in layout copies"). Two vocabularies are
classified: aten op names ("aten::addmm"), matched whole, and everything else (CUDA kernel
names, autograd nodes), matched by substring. Order matters: the first rule that matches wins,
so specific rules (a cuDNN layout-transform kernel) come before broad ones (anything cuDNN is a
convolution).

Inductor's Triton kernels are named after the aten ops fused into them
("triton_<kind>_fused_<op>_<op>_<n>", kind poi = pointwise, red/per = reduction, tem = template),
so a substring rule would file `triton_red_fused__to_copy_native_layer_norm_2` (a layer norm with
its dtype cast fused in) under copies. They are classified by their heaviest fused op instead:
normalization, then the loss, then softmax/attention, then reduction or pooling, then elementwise;
memory only when every fused op is a copy or a view. A template kernel is the GEMM (or
convolution) itself. Ops named in a pointwise kernel's name, such as `convolution` or `addmm`,
are its fused epilogue (bias, activation), not the heavy op, which runs in its own kernel.
"""

from __future__ import annotations

import re

CATEGORIES = ("convolution", "matmul", "attention", "normalization", "elementwise", "memory", "other")
"""Category keys, in display order. "matmul" is matmul/linear, "elementwise" includes activations
and optimizer updates, "memory" is copies, layout changes, views and allocation; "other" holds
pooling, reductions, the loss (log-softmax, NLL) and anything unrecognised. Softmax counts as
attention: in the registered families it only occurs inside attention."""

# Whole-name rules for aten ops, applied to the op name without "aten::" and leading underscores.
_ATEN_RULES: tuple[tuple[str, str], ...] = (
    ("attention", r".*(attention|sdpa|flash|efficient_attention).*|softmax(_backward_data)?"),
    ("convolution", r".*conv.*|im2col|col2im"),
    ("matmul", r"linear(_backward)?|addmm(_activation)?|mm|bmm|baddbmm|addbmm|matmul|dot|addmv|mv|einsum|.*gemm.*"),
    (
        "normalization",
        r".*(batch_norm|layer_norm|group_norm|instance_norm|rms_norm).*",
    ),
    (
        "memory",
        r"copy_?|to_copy|to|contiguous|clone|permute|transpose_?|t_?|view|view_as|reshape|_?unsafe_view"
        r"|expand(_as)?|flatten|unflatten|squeeze_?|unsqueeze_?|as_strided_?|select|slice|narrow|split"
        r"|split_with_sizes|chunk|unbind|cat|stack|index(_select)?|gather|pad|constant_pad_nd"
        r"|empty(_like|_strided)?|zeros(_like)?|ones(_like)?|full(_like)?|fill_|zero_|resize_|detach_?"
        r"|alias|lift_fresh|new_empty(_strided)?|new_zeros|channel_shuffle|pixel_shuffle|roll|repeat",
    ),
    (
        "elementwise",
        r"(add|sub|mul|div|rsub|neg|abs|pow|sqrt|rsqrt|exp|log|reciprocal|sign|lerp|addcmul|addcdiv|clamp"
        r"|clamp_min|clamp_max|maximum|minimum|where|masked_fill|relu|relu6|gelu|silu|sigmoid|tanh|hardtanh"
        r"|hardswish|hardsigmoid|leaky_relu|elu|threshold|dropout|native_dropout|bernoulli|erf|erfinv"
        r"|foreach_.*|fused_adamw?|fused_sgd)(_backward)?_?",
    ),
)

# Substring rules for kernel names and other events, applied to the lower-cased name.
_KERNEL_RULES: tuple[tuple[str, str], ...] = (
    ("other", r"log_?softmax|nll_?loss|cross_?entropy"),  # the loss, before softmax means attention
    ("attention", r"attention|flash|fmha|sdpa|softmax|mha_"),
    (
        "memory",
        r"memcpy|memset|copy|nchwtonhwc|nhwctonchw|tensortransform|transpose|permute|cat_array|catarray"
        r"|contiguous|clone|fillfunctor|indexselect|index_elementwise",
    ),
    (
        "normalization",
        r"batch_?norm|layer_?norm|group_?norm|rms_?norm|bn_fw|bn_bw|welford|gammabeta|cucomputegradinput"
        r"|rowwisemoments",
    ),
    (
        "convolution",
        r"conv(?!ert)|fprop|dgrad|wgrad|implicit_gemm|implicit_precomp|winograd|im2col|col2im|cudnn|xmma_fprop",
    ),
    # splitKreduce sums the partial products of a split-K GEMM: it is part of the matmul. "mm" only
    # as a word or in addmm/bmm (autograd's AddmmBackward0), not inside "FusedAdamMathFunctor".
    ("matmul", r"gemm|gemv|splitkreduce|addmm|bmm|\bmm|matmul|linear|cublas|cutlass|nvjet|sm\d+_xmma"),
    ("other", r"reduce|pool|nll|cross_entropy"),
    (
        "elementwise",
        r"elementwise|vectorized|pointwise|functor|relu|gelu|silu|sigmoid|tanh|dropout|add|mul"
        r"|accumulategrad|multi_tensor_apply|foreach|adam|sgd",
    ),
)

# Inductor Triton kernels: "triton_<kind>_fused_<ops>_<n>" (see the module docstring).
_TRITON = re.compile(r"triton_(?P<kind>[a-z]+)_(?:fused_)?(?P<ops>.*?)_?\d*")
# Searched in the fused ops of pointwise and reduction kernels, first match wins.
_TRITON_RULES: tuple[tuple[str, str], ...] = (
    ("normalization", r"(batch|layer|group|instance|rms)_norm"),
    ("other", r"log_softmax|nll_loss|cross_entropy"),
    ("attention", r"softmax|attention|sdpa"),
    ("other", r"pool"),
)
# Ops that only move or re-describe data: a pointwise kernel fusing nothing else is a copy.
_COPY_OPS = (
    r"(to_copy|copy|clone|contiguous|permute|transpose|view|unsafe_view|reshape|expand|squeeze|unsqueeze"
    r"|as_strided|slice|select|cat|stack|split|unbind|constant_pad_nd|alias|t)"
)

_ATEN_COMPILED = tuple((cat, re.compile(pattern)) for cat, pattern in _ATEN_RULES)
_KERNEL_COMPILED = tuple((cat, re.compile(pattern)) for cat, pattern in _KERNEL_RULES)
_TRITON_COMPILED = tuple((cat, re.compile(pattern)) for cat, pattern in _TRITON_RULES)
_ONLY_COPIES = re.compile(rf"_*{_COPY_OPS}(_+{_COPY_OPS})*_*")


def _classify_triton(kind: str, ops: str) -> str:
    """A Triton kernel's category from its kind (poi, red, per, tem) and its fused op names."""
    if kind == "tem":  # a template: the GEMM, convolution or attention itself
        if "attention" in ops:
            return "attention"
        return "convolution" if "conv" in ops else "matmul"
    for category, pattern in _TRITON_COMPILED:
        if pattern.search(ops):
            return category
    if kind in ("red", "per"):
        return "other"
    return "memory" if _ONLY_COPIES.fullmatch(ops) else "elementwise"


def classify(name: str) -> str:
    """The category (one of CATEGORIES) of an aten op or kernel name; "other" when nothing matches."""
    lowered = name.lower()
    if lowered.startswith("aten::"):
        base = lowered[len("aten::") :].lstrip("_")
        for category, pattern in _ATEN_COMPILED:
            if pattern.fullmatch(base):
                return category
        return "other"
    triton = _TRITON.fullmatch(lowered)
    if triton:
        return _classify_triton(triton["kind"], triton["ops"])
    for category, pattern in _KERNEL_COMPILED:
        if pattern.search(lowered):
            return category
    return "other"
