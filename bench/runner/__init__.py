"""Stage 8: the sweep runner: jobs, worker processes, and turning every outcome into a row."""
