"""Stage 8: the sweep runner: jobs, worker processes, and turning every outcome into a row.

Importing the package is cheap (the limits below appear in `rvbench run --help`); the runner
itself, with pandas and torch, is bench.runner.runner.
"""

# --find-max-batch never probes beyond this batch size on a GPU.
MAX_BATCH_LIMIT = 4096
# ... nor beyond this one on a CPU: a CPU pages to swap long before it runs out of memory, each
# probe of a larger model at batch 512+ takes minutes, and CPU throughput is flat well before 256.
CPU_MAX_BATCH_LIMIT = 256
