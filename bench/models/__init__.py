"""Stage 1: which (arch, impl) pairs exist, how to build each, and their canonical module groups."""

from bench.models.registry import IMPLS, ModelEntry, get_entry, list_archs, list_entries

__all__ = ["IMPLS", "ModelEntry", "get_entry", "list_archs", "list_entries"]
