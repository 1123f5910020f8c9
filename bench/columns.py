"""Every column of a results row, declared once: name, group, unit, label, how it summarises over rounds, the modes
whose rows carry it, and its place in timm's benchmark CSV.

The store's column order, the analysis's per-config medians (`METRICS`), the report's labels and units and the timm
export all derive from `COLUMNS`; each instrument returns its group's values through `values`, and every row is built
by bench.results.rows.make_row: both refuse an undeclared name. `modes` says which rows carry a column (the tests
check the rows of each command against it). A new metric column is: declare it here, compute it in
the instrument that sees it, and (if it deserves one) plot it. What each column means is in README.md ("What the
numbers mean"); `tests/test_columns.py` checks that every column is documented there.

This module imports neither torch nor pandas, so help texts can use it for free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SWEEP_MODES = ("inference", "train", "finetune")  # the modes of `rvbench run` cells
DDP_MODE = "ddp-train"  # the mode of `rvbench scale` rows
TRANSFER_MODE = "transfer"  # the mode of `rvbench transfer` rows
# MLPerf Inference's scenarios, which `rvbench serve` measures (bench.measure.scenarios); a row's mode is "serve-" + it
SCENARIOS = ("single-stream", "server", "offline")
SERVE_MODES = tuple(f"serve-{s}" for s in SCENARIOS)
ALL_MODES = (*SWEEP_MODES, DDP_MODE, TRANSFER_MODE, *SERVE_MODES)
MODE_COMMANDS = {**dict.fromkeys(SWEEP_MODES, "run"), DDP_MODE: "scale", TRANSFER_MODE: "transfer",
                 **dict.fromkeys(SERVE_MODES, "serve")}  # who writes them
_SWEEP_DDP = (*SWEEP_MODES, DDP_MODE)


@dataclass(frozen=True)
class Column:
    """One results column."""

    name: str
    group: str  # see GROUPS
    unit: str = ""  # as labels show it: "ms", "img/s", "MiB" (2**20 bytes) ...; "" for counts, flags and text
    label: str = ""  # axis label before the unit, e.g. "p50 step time"; default: the name
    short: str = ""  # table header before the unit, e.g. "p50"; default: the label
    median: bool = False  # views show its median over rounds (bench.results.analysis.config_medians)
    modes: tuple[str, ...] | None = None  # the modes whose rows carry it (null on the others); None: its group's
    approximate: bool = False  # a coarse measurement, labelled "(approx.)" wherever it is shown
    # (timm benchmark-CSV name after infer_/train_, factor from ours, decimals timm rounds it to or None)
    timm: tuple[str, float, int | None] | None = None

    def axis_label(self) -> str:
        """Plot axis label, e.g. "p50 step time (ms)", "RSS growth during the cell (MiB, approximate)"."""
        text = self.label or self.name
        unit = ", ".join(u for u in (self.unit, "approximate" if self.approximate else "") if u)
        return f"{text} ({unit})" if unit else text

    def header(self, unit: str | None = None) -> str:
        """Table header, e.g. "p50 ms", "RSS growth MiB (approx.)"; `unit` overrides the declared one."""
        text = " ".join(t for t in (self.short or self.label or self.name, self.unit if unit is None else unit) if t)
        return text + (" (approx.)" if self.approximate else "")


def _group(group: str, *columns: Column | str, modes: tuple[str, ...] = ALL_MODES) -> tuple[Column, ...]:
    """Columns of one group, in order, carried by rows of `modes` unless a column says otherwise; a bare name
    is a column with no unit or label."""
    made = [Column(c, group) if isinstance(c, str) else c for c in columns]
    return tuple(replace(c, group=group, modes=c.modes or modes) for c in made)


def _ms(name: str, label: str, short: str, median: bool = False) -> Column:
    return Column(name, "", "ms", label, short, median=median, modes=_SWEEP_DDP)


COLUMNS: tuple[Column, ...] = (
    *_group("identity", "schema_version", "run_id", "cell_id"),
    # the cell's fields (bench.config.cell.Cell), and `slot`: where it ran (a device or a Ray actor's GPU)
    *_group("config", "arch", "impl", Column("batch_size", "", label="batch size", short="bs"),
            Column("image_size", "", "px", "image size"), "precision", "channels_last", "compile", "backend", "mode",
            "optimizer", "device", "slot", "round"),
    # a --find-max-batch search's row (every row says whether it is one)
    *_group("search", Column("find_max_batch", "", modes=ALL_MODES), "max_batch_oom_at", "max_batch_limit_reason",
            modes=SWEEP_MODES),
    *_group("outcome", "status", "message", "started_at", Column("wall_s", "", "s", "cell wall time"),
            Column("overhead_s", "", "s", "time outside the timed loop")),
    *_group("prediction", Column("mem_predicted_mb", "", "MiB", "predicted peak allocated", "predicted",
                                 median=True, modes=SWEEP_MODES)),
    *_group("counts", Column("params_total", "", label="parameters", median=True, modes=ALL_MODES,
                             timm=("param_count", 1e-6, 2)),
            Column("params_trainable", "", label="trainable parameters", median=True, modes=ALL_MODES),
            Column("gflops_per_image", "", "GFLOP", "forward FLOPs per image", median=True, modes=SWEEP_MODES,
                   timm=("gmacs", 0.5, 2)),
            Column("gflops_per_step", "", "GFLOP", "FLOPs per step", modes=SWEEP_MODES), modes=_SWEEP_DDP),
    *_group("timing", "n_iters", Column("timed_s", "", "s", "timed loop"), "warmup_iters",
            _ms("step_ms_p50", "p50 step time", "p50", median=True), _ms("step_ms_p90", "p90 step time", "p90", True),
            _ms("step_ms_p95", "p95 step time", "p95"), _ms("step_ms_p99", "p99 step time", "p99", True),
            Column("step_ms_mean", "", "ms", "mean step time", "mean", timm=("step_time", 1, None)),
            _ms("step_ms_std", "step time standard deviation", "std"), _ms("step_ms_min", "fastest step", "min"),
            _ms("step_ms_max", "slowest step", "max"), _ms("step_ms_iqr", "step time IQR", "IQR"), "noisy",
            _ms("step_ms_p50_ci_low", "p50 step time, 95% CI low", "p50 CI low"),
            _ms("step_ms_p50_ci_high", "p50 step time, 95% CI high", "p50 CI high"),
            Column("rel_ci", "", label="95% CI of the median step, ± share of the median", short="±CI"),
            "converged",
            Column("throughput", "", "img/s", "throughput", median=True),
            Column("throughput_ci_low", "", "img/s", "throughput, 95% CI low", "CI low"),
            Column("throughput_ci_high", "", "img/s", "throughput, 95% CI high", "CI high"),
            Column("throughput_wall", "", "img/s", "throughput over the loop's wall time",
                   timm=("samples_per_sec", 1, None)),
            Column("timer", "", label="clock of the step times", modes=SWEEP_MODES), modes=_SWEEP_DDP),
    *_group("build", Column("build_s", "", "s", "model build"),
            Column("compile_s", "", "s", "compile time (first step)", "compile", median=True),
            Column("recompiles", "", label="recompilations", median=True), "recompiles_timed", "inductor_freezing",
            Column("cudagraph_record_s", "", "s", "CUDA graph recording"), modes=SWEEP_MODES),
    # A backend other than eager (bench.execute.backends): the ONNX export (seconds, size, exporter, opset and
    # warnings), the backend's threads and OpenVINO's performance hint, and the parity of its logits with eager fp32
    # PyTorch's on the cell's batch (bench.config.backends.PARITY); null on eager rows.
    *_group("deploy", Column("export_s", "", "s", "export time", "export"),
            Column("model_mb", "", "MiB", "exported model size", "model"), "export_note",
            Column("backend_threads", "", label="backend threads", short="threads"),
            Column("backend_hint", "", label="backend performance hint", short="hint"),
            Column("parity_max_abs", "", label="largest logit difference from eager fp32", short="max abs"),
            Column("parity_max_rel", "", label="largest logit difference from eager fp32, share of its largest logit",
                   short="max rel"),
            Column("parity_cos", "", label="cosine similarity of the logits to eager fp32's", short="cos"),
            Column("parity_top1", "", label="share of images whose top-1 class agrees with eager fp32",
                   short="top-1 agree"),
            Column("parity_ok", "", label="within the parity tolerance", short="parity ok"), modes=SWEEP_MODES),
    *_group("training", Column("optimizer_used", "", modes=(*SWEEP_MODES, TRANSFER_MODE)), "amp_skipped_steps",
            modes=SWEEP_MODES),
    *_group("memory", Column("mem_peak_alloc_mb", "", "MiB", "peak allocated memory", "peak", median=True),
            Column("mem_peak_reserved_mb", "", "MiB", "peak reserved memory", "reserved"),
            Column("mem_weights_mb", "", "MiB", "weights"), Column("mem_activation_mb", "", "MiB", "activations"),
            Column("mem_graph_pool_mb", "", "MiB", "CUDA graph pool"),
            Column("mem_rss_delta_mb", "", "MiB", "RSS growth during the cell", "RSS growth", median=True,
                   approximate=True),
            "mem_note"),
    *_group("power", Column("power_w_mean", "", "W", "mean board power"), Column("power_w_max", "", "W", "peak power"),
            "power_source", Column("sm_clock_mhz", "", "MHz", "SM clock"),
            Column("mem_clock_mhz", "", "MHz", "memory clock"), Column("temp_c_max", "", "°C", "peak temperature"),
            Column("gpu_util_pct", "", "%", "GPU utilisation"), "throttle_reasons",
            Column("energy_j_per_image", "", "J/img", "energy per image", "energy", median=True), "energy_source",
            Column("energy_period_ms", "", "ms", "energy counter update period"), "power_note", modes=SWEEP_MODES),
    # Whether the machine was quiet while the cell's loop ran (bench.measure.contention): the share of the cell's
    # CPUs that other processes used during the timed loop, the 1-minute load average at the cell's start,
    # the other processes on its GPU (CUDA only), and the verdict.
    *_group("contention", Column("others_cpu", "", label="CPU share other processes used during the timed loop",
                                 short="others CPU"),
            Column("load_avg", "", label="1-minute load average at the cell's start", short="load"),
            Column("gpu_other_procs", "", label="other processes on the GPU", short="GPU procs"), "contended",
            modes=SWEEP_MODES),
    *_group("efficiency", Column("achieved_tflops", "", "TFLOP/s", "achieved", median=True),
            Column("mfu", "", label="model FLOPs utilisation", short="MFU", median=True), modes=SWEEP_MODES),
    *_group("numerics", "tf32_matmul", "tf32_cudnn", "cudnn_benchmark", modes=(*SWEEP_MODES, TRANSFER_MODE)),
    # `rvbench scale` (bench.runner.scale): the world size and DDP's settings, every rank's step-time percentiles
    # and memory (rank_stats, JSON), the weak-scaling efficiency against the smallest world size measured
    # (scaling_base), communication from the profiler (per step, share of the step, share hidden under compute),
    # the bytes all-reduced per step against the gradient bytes, and the ring all-reduce bound over the link.
    *_group("scale", Column("world_size", "", label="ranks"), "nnodes", "ddp_backend", "ddp_bucket_mb",
            "ddp_static_graph", "ddp_grad_as_bucket_view", "threads_per_rank", "rank_stats",
            Column("scaling_efficiency", "", label="weak-scaling efficiency"), "scaling_base",
            Column("comm_ms", "", "ms", "communication per step"), Column("comm_share", "", label="communication share"),
            Column("comm_overlap", "", label="communication hidden under compute"),
            Column("allreduce_bytes", "", "B", "bytes all-reduced per step"), Column("grad_bytes", "", "B"), "link",
            Column("link_gbytes_s", "", "GB/s", "link bandwidth per direction"),
            Column("allreduce_bound_ms", "", "ms", "ring all-reduce bound"), modes=(DDP_MODE,)),
    # `rvbench transfer` (bench.measure.transfer): `record` is "epoch" (one per epoch) or "run" (one per run, after
    # its epochs: final accuracy, time to target); the strategy, the starting weights ("random" without pretrained
    # ones), the seed, the epoch (1-based; a run row: epochs run), the parameter groups trained, mean train loss,
    # validation top-1 (0..1), the epoch's training and evaluation seconds, cumulative seconds (both), training
    # images/s, the target top-1 and when it was first reached (cumulative seconds; null: not reached), the data.
    *_group("transfer", Column("record", "", modes=(TRANSFER_MODE, *SERVE_MODES)), "strategy", "weights", "seed", "epoch", "trained_groups", "train_loss",
            Column("val_top1", "", label="validation top-1"), Column("epoch_s", "", "s"), Column("eval_s", "", "s"),
            Column("time_s", "", "s", "training and evaluation time"), Column("images_per_s", "", "img/s"),
            "target_acc", Column("time_to_target_s", "", "s", "time to target"), "data", "data_format",
            "train_images", "val_images", "num_classes", modes=(TRANSFER_MODE,)),
    # `rvbench serve` (bench.measure.scenarios): a row per SingleStream run, Offline query and Server trial (record
    # "trial"), and a Server search's answer (record "result": the trial at the highest offered QPS that met the SLO).
    # The batcher (max_batch is the cell's batch_size) and its queue delay; the SLO; the load offered and achieved;
    # request latency (from the request's scheduled arrival to its completion, so a stalled server cannot hide its
    # queue) and its MLPerf early-stopping upper bound; the queueing share; how late the load generator sent;
    # the batches the batcher formed; how busy the server and the GPU were.
    *_group("serving", Column("max_delay_ms", "", "ms", "batcher's longest queue delay", "delay"),
            Column("slo_ms", "", "ms", "latency bound (p99)", "SLO"), "queries", "trial",
            Column("offered_qps", "", "req/s", "offered load", "offered"),
            Column("achieved_qps", "", "req/s", "completed requests per second", "achieved"),
            Column("qps_at_slo", "", "req/s", "highest offered load meeting the SLO", "QPS at SLO"), "slo_met",
            "early_stop",
            Column("lat_ms_p50", "", "ms", "p50 latency", "p50"), Column("lat_ms_p90", "", "ms", "p90 latency", "p90"),
            Column("lat_ms_p99", "", "ms", "p99 latency", "p99"),
            Column("lat_ms_p999", "", "ms", "p99.9 latency", "p99.9"),
            Column("lat_ms_max", "", "ms", "slowest request", "max"),
            Column("lat_ms_bound", "", "ms", "latency percentile's early-stopping upper bound", "bound"),
            Column("queue_ms_mean", "", "ms", "mean queueing time", "queue"),
            Column("queue_share", "", label="queueing share of latency", short="queue share"),
            Column("queue_dominated", "", label="share of requests that queued longer than they were served",
                   short="queue-dominated"),
            Column("send_lag_ms_p99", "", "ms", "p99 of send time after schedule", "send lag p99"),
            Column("service_ms_p50", "", "ms", "p50 batch service time", "service p50"),
            Column("batch_mean", "", label="mean batch formed", short="mean batch"), "batch_hist",
            Column("server_busy", "", label="share of the time the server ran the model", short="server busy"),
            Column("gpu_busy", "", label="share of the time the GPU ran the model (CUDA events)", short="GPU busy"),
            modes=SERVE_MODES),
    # The environment of the slot that ran the row (bench.measure.env.collect_env, once per slot); env_cpu_affinity:
    # the CPUs its worker ran on ("0-15"), env_compile_threads: Inductor's compile threads as set for it (null:
    # Inductor's default, a thread per CPU of the affinity up to 32).
    *_group("environment", "env_torch", "env_torchvision", "env_timm", "env_fvcore", "env_cuda", "env_cudnn",
            "env_gpu_name", "env_driver", "env_sm_count", Column("env_gpu_mem_gb", "", "GiB"), "env_cpu",
            "env_cpu_governor", "env_threads", "env_cpu_affinity", "env_compile_threads", "env_os", "env_python",
            "env_host", "env_git_commit", "env_git_dirty", "env_timestamp"),
)  # fmt: skip

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
if len(BY_NAME) != len(COLUMNS):
    raise ValueError("a column is declared twice")
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(c.group for c in COLUMNS))
# What bench.measure.cell.measure_cell returns (less "samples_ms"), in table order.
MEASURE_GROUPS = ("counts", "timing", "build", "deploy", "training", "memory", "power", "contention", "efficiency",
                  "numerics")


def names(*groups: str) -> tuple[str, ...]:
    """The names of the columns of `groups`, in table order."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown column group(s) {sorted(unknown)}; valid: {', '.join(GROUPS)}")
    return tuple(c.name for c in COLUMNS if c.group in groups)


def for_mode(mode: str) -> tuple[str, ...]:
    """The names of the columns rows of `mode` carry (the others are null on them)."""
    return tuple(c.name for c in COLUMNS if mode in c.modes)


def values(group: str, **measured: object) -> dict:
    """An instrument's columns: every column of `group`, in order, None where `measured` has no value.

    ValueError for a name the group does not declare, so an instrument cannot return a column the store,
    analysis and report would not know.
    """
    declared = names(group)
    undeclared = measured.keys() - set(declared)
    if undeclared:
        raise ValueError(f"column(s) {sorted(undeclared)} not declared in group {group!r} of bench.columns")
    return {name: measured.get(name) for name in declared}


MEASURE_COLUMNS: tuple[str, ...] = names(*MEASURE_GROUPS)
# The columns whose median over rounds every view of a configuration shows.
METRICS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.median)


def speed_label(reference: str, subject: str = "rv") -> str:
    """How every view labels a ratio of two implementations: the subject's speed ÷ the reference's, so above 1
    means the subject is faster (its time ratio is the inverse), e.g. "rv speed ÷ torchvision"."""
    return f"{subject} speed ÷ {reference}"
