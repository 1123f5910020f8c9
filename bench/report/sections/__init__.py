"""One module per section of the report page, each drawing its plots and tables from the run's rows:
perf (throughput, latency, measured memory), derived (speedups, rv speed ÷ reference, MFU, energy), memory
(predicted peak, largest batch per card), profile and profile_tables, scaling (`rvbench scale`), transfer
(`rvbench transfer`), fleet (per GPU model) and flops (the three FLOP counters)."""
