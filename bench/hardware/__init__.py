"""Stage 1: devices: resolution, validation, capability checks and known GPU specifications."""
