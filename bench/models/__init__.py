"""Stage 1: which (arch, impl) pairs exist, how to build each, and their canonical module groups."""

from bench.models.registry import FAMILY_NAMES, IMPLS, ModelEntry, family_spec, get_entry, list_archs, list_entries

__all__ = ["FAMILY_NAMES", "IMPLS", "ModelEntry", "family_spec", "get_entry", "list_archs", "list_entries"]
