"""Known GPUs: dense peak TFLOP/s per precision and memory bandwidth, for MFU and rooflines.

Figures are NVIDIA's published peaks, DENSE (the datasheets' headline tensor numbers assume 2:4
sparsity; those are halved here), at boost clock:
- H100 SXM5 / PCIe / NVL, H200 SXM / NVL: "NVIDIA H100 Tensor Core GPU" and "NVIDIA H200 Tensor
  Core GPU" datasheets;
- A100 SXM4 / PCIe 40 and 80 GB: "NVIDIA A100 Tensor Core GPU" datasheet;
- A10, L4, L40S: their product datasheets;
- RTX 4090: "NVIDIA Ada GPU Architecture" whitepaper, appendix (FP16/BF16 tensor with FP32
  accumulate, which is what PyTorch uses: half the FP16-accumulate figure);
- RTX 5090: "NVIDIA RTX Blackwell GPU Architecture" whitepaper, appendix (same convention);
- B200: HGX B200 datasheet, 8-GPU totals divided by 8.
`fp32` is the non-tensor-core FP32 rate; `tf32`, `fp16`, `bf16` are tensor-core rates.
A device not matched here gets None: an MFU against a guessed peak would be worse than none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bench.errors import UsageError
from bench.precisions import precision as precision_spec


@dataclass(frozen=True)
class DeviceSpec:
    """One GPU model's published ceilings."""

    name: str
    peak_tflops: dict[str, float]  # "fp32" | "tf32" | "fp16" | "bf16" -> dense TFLOP/s
    mem_bw_gbs: float  # DRAM bandwidth, GB/s (10**9 bytes/s)


def _spec(name: str, fp32: float, tf32: float, fp16: float, bf16: float, bw: float) -> DeviceSpec:
    return DeviceSpec(name, {"fp32": fp32, "tf32": tf32, "fp16": fp16, "bf16": bf16}, bw)


H100_SXM = _spec("H100 SXM", 67.0, 494.7, 989.4, 989.4, 3350.0)
H100_PCIE = _spec("H100 PCIe", 51.2, 378.0, 756.0, 756.0, 2000.0)
H100_NVL = _spec("H100 NVL", 60.0, 417.5, 835.5, 835.5, 3900.0)
H200_SXM = _spec("H200 SXM", 67.0, 494.7, 989.4, 989.4, 4800.0)
H200_NVL = _spec("H200 NVL", 60.0, 417.5, 835.5, 835.5, 4800.0)
A100_SXM_80 = _spec("A100 SXM 80GB", 19.5, 156.0, 312.0, 312.0, 2039.0)
A100_SXM_40 = _spec("A100 SXM 40GB", 19.5, 156.0, 312.0, 312.0, 1555.0)
A100_PCIE_80 = _spec("A100 PCIe 80GB", 19.5, 156.0, 312.0, 312.0, 1935.0)
A100_PCIE_40 = _spec("A100 PCIe 40GB", 19.5, 156.0, 312.0, 312.0, 1555.0)
L4 = _spec("L4", 30.3, 60.0, 121.0, 121.0, 300.0)
L40S = _spec("L40S", 91.6, 183.0, 362.05, 362.05, 864.0)
A10 = _spec("A10", 31.2, 62.5, 125.0, 125.0, 600.0)
RTX_4090 = _spec("RTX 4090", 82.6, 82.6, 165.2, 165.2, 1008.0)
RTX_5090 = _spec("RTX 5090", 104.8, 104.8, 209.5, 209.5, 1792.0)
B200 = _spec("B200", 75.0, 1125.0, 2250.0, 2250.0, 8000.0)

# (pattern, spec), first match wins, searched case-insensitively in the CUDA device name
# (e.g. "NVIDIA H100 80GB HBM3" is the SXM part, "NVIDIA H100 PCIe", "NVIDIA H100 NVL").
# \b keeps "A10" from matching "A100"/"A10G", "L4" from "L40", "H200" from "GH200"; "$" keeps
# the consumer parts from matching their cut-down "D" and "Laptop GPU" variants.
_RULES: tuple[tuple[str, DeviceSpec], ...] = (
    (r"\bH100\b.*\bNVL\b", H100_NVL),
    (r"\bH100\b.*\bPCIe\b", H100_PCIE),
    (r"\bH100\b.*\b(SXM|HBM3)", H100_SXM),
    (r"\bH200\b.*\bNVL\b", H200_NVL),
    (r"\bH200\b(?!.*\bNVL\b)", H200_SXM),
    (r"\bA100\b.*PCIE.*80GB|\bA100\b.*80GB.*PCIE", A100_PCIE_80),
    (r"\bA100\b.*PCIE.*40GB|\bA100\b.*40GB.*PCIE", A100_PCIE_40),
    (r"\bA100\b.*SXM.*80GB", A100_SXM_80),
    (r"\bA100\b.*SXM.*40GB", A100_SXM_40),
    (r"\bL40S\b", L40S),
    (r"\bL4\b", L4),
    (r"\bA10\b", A10),
    (r"\bRTX 4090$", RTX_4090),
    (r"\bRTX 5090$", RTX_5090),
    (r"\bB200\b", B200),
)

def match_device(gpu_name: str | None) -> DeviceSpec | None:
    """The spec of a CUDA device name (as torch.cuda.get_device_name gives it), None if unknown.

    A MIG slice ("... MIG 1g.10gb") has a fraction of the board's peak: unknown, not the board's.
    """
    if not gpu_name or "MIG" in gpu_name:
        return None
    name = gpu_name.strip()
    for pattern, spec in _RULES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return spec
    return None


def peak_tflops_for(gpu_name: str | None, precision: str) -> float | None:
    """Dense peak TFLOP/s of that device at that cell precision; None for unknown devices and for
    torch-default (mixed TF32 convolutions and fp32 matmuls: no single peak)."""
    spec, key = match_device(gpu_name), precision_spec(precision).peak  # autocast: its matmuls' precision
    return None if spec is None or key is None else spec.peak_tflops[key]


# ---- links between GPUs, for the ring all-reduce bound of `rvbench scale` -------------------------


@dataclass(frozen=True)
class Link:
    """A link's published bandwidth per direction, in GB/s (10**9 bytes/s): a ring all-reduce sends
    and receives at once, so each step of the ring moves at this rate."""

    name: str
    gbytes_s: float


# Per direction, from the vendors' figures: NVLink 3 (A100) 600 GB/s, NVLink 4 (H100/H200 SXM)
# 900 GB/s, NVLink 5 (B200) 1.8 TB/s and the H100/H200 NVL bridge 600 GB/s are bidirectional totals,
# halved here; PCIe 4.0 / 5.0 x16 are 16 / 32 GT/s x 16 lanes x 128/130 encoding; InfiniBand HDR and
# NDR are 200 and 400 Gb/s (bits) per port, 25 and 50 GB/s.
LINKS = {
    "nvlink3": Link("NVLink 3", 300.0),
    "nvlink4": Link("NVLink 4", 450.0),
    "nvlink5": Link("NVLink 5", 900.0),
    "nvlink-bridge": Link("NVLink bridge (NVL)", 300.0),
    "pcie4": Link("PCIe 4.0 x16", 31.5),
    "pcie5": Link("PCIe 5.0 x16", 63.0),
    "ib-hdr": Link("InfiniBand HDR", 25.0),
    "ib-ndr": Link("InfiniBand NDR", 50.0),
}
# The link between GPUs of one node in each part's usual form factor: SXM boards talk over NVLink,
# PCIe cards over PCIe (an optional NVLink bridge is not assumed).
_NODE_LINK = {
    H100_SXM.name: "nvlink4", H100_PCIE.name: "pcie5", H100_NVL.name: "nvlink-bridge", H200_SXM.name: "nvlink4",
    H200_NVL.name: "nvlink-bridge", A100_SXM_80.name: "nvlink3", A100_SXM_40.name: "nvlink3",
    A100_PCIE_80.name: "pcie4", A100_PCIE_40.name: "pcie4", L4.name: "pcie4", L40S.name: "pcie4",
    A10.name: "pcie4", RTX_4090.name: "pcie4", RTX_5090.name: "pcie5", B200.name: "nvlink5",
}
_BANDWIDTH = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(GB/s|Gb/s)\s*$")


def node_link(gpu_name: str | None) -> Link | None:
    """The usual link between two GPUs of this kind in one node; None for unknown devices."""
    spec = match_device(gpu_name)
    return None if spec is None else LINKS[_NODE_LINK[spec.name]]


def parse_link(text: str) -> Link:
    """A link named in LINKS, or a bandwidth with its unit: "450GB/s" (bytes) or "400Gb/s" (bits)."""
    if text.lower() in LINKS:
        return LINKS[text.lower()]
    match = _BANDWIDTH.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise UsageError(f"link {text!r}: give a bandwidth per direction with its unit, e.g. 450GB/s (bytes) "
                         f"or 400Gb/s (bits), or one of: {', '.join(LINKS)}")
    value = float(match.group(1))
    return Link(text.strip(), value if match.group(2) == "GB/s" else value / 8)


def ring_allreduce_s(nbytes: float, ranks: int, link: Link) -> float:
    """Seconds a ring all-reduce of `nbytes` over `ranks` needs at least: each rank sends (and
    receives) 2 (n - 1) / n of the data, at the link's bandwidth per direction."""
    return 2 * (ranks - 1) / ranks * nbytes / (link.gbytes_s * 1e9)
