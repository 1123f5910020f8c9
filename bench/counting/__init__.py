"""Stage 3: static counts: parameters and FLOPs from three counters, and the pinned expected counts."""
