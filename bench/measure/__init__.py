"""Stage 5: instruments (timing, memory, power, environment) and the measurement of one cell."""
