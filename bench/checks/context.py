"""What every GPU self-check gets (bench.checks.gpu, bench.checks.processes): its `Context`, a device
and a folder, and the timing of the cells it measures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.config.cell import Cell
from bench.config.sweep import TimingConfig

# No power sampling, so no power floor: the power check reads NVML itself.
CHECK_TIMING = TimingConfig(warmup_iters=5, warmup_s=0.5, min_iters=20, min_s=1.0, max_iters=2000, max_s=1.0,
                            power=False)


@dataclass(frozen=True)
class Context:
    """What every check gets: the device ("cuda:N") and a directory for its files."""

    device: str
    out_dir: Path

    def cell(self, arch: str, batch_size: int, **fields: object) -> Cell:
        """A cell on this device, at the arch's default input size unless `image_size` is given;
        torchvision's model unless `impl` is given."""
        from bench.models import get_entry

        impl = str(fields.pop("impl", "torchvision"))
        size = int(fields.pop("image_size", get_entry(arch, impl).image_size))
        return Cell(arch=arch, impl=impl, batch_size=batch_size, image_size=size, device=self.device, **fields)
