"""The sweep presets shipped as TOML files in this folder (read by bench.config.sweep).

Their names alone need no torch, so `rvbench run --help` can offer them as choices at once.
"""

from __future__ import annotations

from pathlib import Path

PRESET_DIR = Path(__file__).parent


def list_presets() -> list[str]:
    """Names of the presets shipped in bench/config/presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
