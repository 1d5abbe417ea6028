"""Benchmark the diffraction simulation: throughput against the irreducible work, and memory.

Throughput: `simulate_diffraction` on the embedded object and probe at each patch size and
dose, against a baseline that does only the irreducible work on the same arrays. The
baseline runs a batched FFT of the exit waves and Poisson sampling of the scaled
intensities, chunked and threaded the same way. The ratio is simulation patterns/s over
baseline patterns/s, in wall-clock time and in CPU time (all threads), because CPU time
changes less when other processes share the cores.

Memory: `simulate_diffraction` alone and `generate_phase_c` for one dose, each run in a
fresh subprocess per scan, once with a scan of n positions and once with 4n. Each child
reports its peak RSS (VmHWM and `ru_maxrss`) and the bytes of the arrays the simulation
returns (amplitudes and patches). The growth of peak RSS between the two scans should
stay within the growth of those arrays.

Usage:
    python benchmarks/bench_simulation.py [--sizes 64:4096,128:1024] [--doses 1e3,1e4,1e5]
        [--workers 2] [--repeats 3] [--output-dir benchmarks/results]

It prints a Markdown table and writes `simulation.json` and `simulation.md` to the output
folder.
"""

import argparse
import concurrent.futures
import datetime
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.fft

from fly64.atomic import write_json, write_text
from fly64.physics.forward import far_field, simulate_diffraction
from fly64.physics.objects import default_object
from fly64.physics.probe import default_probe
from fly64.physics.scan import allowed_centre_range, raster_positions

logger = logging.getLogger("bench_simulation")

MEMORY_PATCH_SIZE = 64
MEMORY_OBJECT_SIZE_PX = 1024
# Raster steps whose scans differ fourfold in size on a 1024 px object at N = 64: 60 x 60
# positions at 16 px and 120 x 120 at 8 px. The smaller scan's outputs (about 170 MiB) are
# large enough that its peak RSS is set by the simulation, not by the imports.
MEMORY_STEPS_PX = (16.0, 8.0)
MEMORY_DOSE_PHOTONS = 1e4
MEMORY_STAGES = ("simulation", "generation")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="64:4096,128:1024",
        help="comma-separated N:patterns pairs for the throughput runs (default: %(default)s)",
    )
    parser.add_argument(
        "--doses", default="1e3,1e4,1e5", help="comma-separated doses, photons per pattern (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="simulation threads; 0 uses every CPU (default: %(default)s)"
    )
    parser.add_argument("--chunk-patterns", type=int, default=256, help="patterns per chunk (default: %(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per case; the median counts (default: %(default)s)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("benchmarks/results"),
        help="folder for simulation.json and simulation.md (default: %(default)s)",
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-RSS runs")
    parser.add_argument("--memory-child", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-stage", choices=MEMORY_STAGES, default="generation", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def random_positions(object_size_px: int, patch_size: int, n_patterns: int, seed: int) -> np.ndarray:
    """Draw uniform positions over the allowed region, float64 (n, 2)."""
    low, high = allowed_centre_range(object_size_px, patch_size, margin_px=2.0)
    return np.random.default_rng(seed).uniform(low, high, size=(n_patterns, 2))


def wall_and_cpu_seconds(function) -> tuple[float, float]:
    """Time one call: wall-clock seconds and CPU seconds of all this process's threads."""
    wall_started = time.perf_counter()
    cpu_started = time.process_time()
    function()
    return time.perf_counter() - wall_started, time.process_time() - cpu_started


def irreducible_work(exit_waves: np.ndarray, expected_counts: np.ndarray, chunk_patterns: int, workers: int) -> None:
    """Run a batched FFT of the exit waves and Poisson draws of the expected counts, chunk by chunk."""
    n_patterns = exit_waves.shape[0]
    chunks = [slice(start, start + chunk_patterns) for start in range(0, n_patterns, chunk_patterns)]
    seeds = np.random.SeedSequence(0).spawn(len(chunks))

    def run_chunk(index: int) -> None:
        chunk = chunks[index]
        scipy.fft.fft2(exit_waves[chunk], axes=(-2, -1), norm="ortho", workers=1)
        np.random.Generator(np.random.PCG64(seeds[index])).poisson(expected_counts[chunk])

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as executor:
        list(executor.map(run_chunk, range(len(chunks))))


def throughput_case(patch_size: int, n_patterns: int, dose_photons: float, arguments: argparse.Namespace) -> dict:
    """Time the simulation and the irreducible baseline for one patch size and dose."""
    workers = arguments.workers or os.cpu_count() or 1
    object_size_px = 4 * patch_size
    obj = default_object(object_size_px)
    probe = default_probe(patch_size)
    positions = random_positions(object_size_px, patch_size, n_patterns, seed=0)

    def simulate() -> None:
        simulate_diffraction(
            obj, probe, positions, dose_photons, seed=1, chunk_patterns=arguments.chunk_patterns, workers=workers
        )

    reference = simulate_diffraction(obj, probe, positions, dose_photons, seed=1, workers=workers)
    exit_waves = reference.patches * probe
    expected_counts = reference.scale_factor * np.square(np.abs(far_field(exit_waves)).astype(np.float64))
    del reference

    def baseline() -> None:
        irreducible_work(exit_waves, expected_counts, arguments.chunk_patterns, workers)

    baseline()  # warm-up: FFT plans and page faults
    # Alternating the two keeps their timings comparable when other processes share the CPUs.
    simulation_timings, baseline_timings = [], []
    for _ in range(arguments.repeats):
        simulation_timings.append(wall_and_cpu_seconds(simulate))
        baseline_timings.append(wall_and_cpu_seconds(baseline))
    simulation_wall_s, simulation_cpu_s = np.median(simulation_timings, axis=0)
    baseline_wall_s, baseline_cpu_s = np.median(baseline_timings, axis=0)

    result = {
        "patch_size": patch_size,
        "n_patterns": n_patterns,
        "dose_photons": dose_photons,
        "workers": workers,
        "simulation_patterns_per_s": n_patterns / simulation_wall_s,
        "baseline_patterns_per_s": n_patterns / baseline_wall_s,
        "ratio": baseline_wall_s / simulation_wall_s,
        "simulation_patterns_per_cpu_s": n_patterns / simulation_cpu_s,
        "baseline_patterns_per_cpu_s": n_patterns / baseline_cpu_s,
        "cpu_ratio": baseline_cpu_s / simulation_cpu_s,
    }
    logger.info("N=%d dose=%.0e: %s", patch_size, dose_photons, json.dumps(result))
    return result


def current_rss_bytes() -> int:
    """Return the resident set size of this process now, from /proc/self/statm (Linux)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def high_water_rss_bytes() -> int:
    """Return VmHWM, the peak resident set size of this process's own memory map (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


def memory_child(stage: str, step_px: float, workers: int, chunk_patterns: int) -> dict:
    """Run one stage for one dose in this process and return its scan size and RSS figures.

    `simulation` runs `simulate_diffraction` alone. `generation` runs `generate_phase_c`,
    which also validates and writes the train and test files.
    """
    from studies.fly64_dose_overlap.config import parse_config
    from studies.fly64_dose_overlap.generation import generate_phase_c

    config = parse_config(
        {
            "study": {"patch_size_pixels": MEMORY_PATCH_SIZE, "dose_list": [MEMORY_DOSE_PHOTONS]},
            "simulation": {
                "object_size_px": MEMORY_OBJECT_SIZE_PX,
                "scan_step_px": step_px,
                "workers": workers,
                "chunk_patterns": chunk_patterns,
            },
        },
        source="bench_simulation",
    )
    settings = config.simulation
    obj = default_object(settings.object_size_px)
    probe = default_probe(MEMORY_PATCH_SIZE)
    positions = raster_positions(
        settings.object_size_px, MEMORY_PATCH_SIZE, step_px, settings.jitter_px, settings.margin_px, seed=42
    )
    rss_before_bytes = current_rss_bytes()
    peak_before_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    if stage == "simulation":
        simulate_diffraction(
            obj, probe, positions, MEMORY_DOSE_PHOTONS, seed=42, chunk_patterns=chunk_patterns, workers=workers
        )
    else:
        with tempfile.TemporaryDirectory() as folder:
            generate_phase_c(config, Path(folder))

    n_positions = positions.shape[0]
    # Amplitudes are float32 and patches complex64: 4 + 8 bytes per pixel.
    output_bytes = n_positions * MEMORY_PATCH_SIZE**2 * (4 + 8)
    return {
        "stage": stage,
        "scan_step_px": step_px,
        "n_positions": n_positions,
        "rss_before_bytes": rss_before_bytes,
        "ru_maxrss_before_bytes": peak_before_bytes,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_rss_bytes": high_water_rss_bytes(),
        "output_arrays_bytes": output_bytes,
    }


def memory_runs(arguments: argparse.Namespace) -> list[dict]:
    """Run `memory_child` in fresh subprocesses for both stages and scans; compare the growth."""
    comparisons = []
    for stage in MEMORY_STAGES:
        runs = []
        for step_px in MEMORY_STEPS_PX:
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--memory-child",
                str(step_px),
                "--memory-stage",
                stage,
                "--workers",
                str(arguments.workers),
                "--chunk-patterns",
                str(arguments.chunk_patterns),
            ]
            completed = subprocess.run(command, check=True, capture_output=True, text=True)
            runs.append(json.loads(completed.stdout.strip().splitlines()[-1]))
            logger.info("memory run: %s", runs[-1])

        small, large = runs
        comparisons.append(
            {
                "stage": stage,
                "patch_size": MEMORY_PATCH_SIZE,
                "object_size_px": MEMORY_OBJECT_SIZE_PX,
                "dose_photons": MEMORY_DOSE_PHOTONS,
                "runs": runs,
                "position_ratio": large["n_positions"] / small["n_positions"],
                "peak_rss_growth_bytes": large["peak_rss_bytes"] - small["peak_rss_bytes"],
                "output_arrays_growth_bytes": large["output_arrays_bytes"] - small["output_arrays_bytes"],
            }
        )
    return comparisons


def machine_description() -> dict:
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
    }


def markdown_report(results: dict) -> str:
    mib = 1024 * 1024
    lines = [
        f"Date: {results['date']}  ",
        (
            f"Machine: {results['machine']['cpu']}, {results['machine']['cpu_count']} CPUs, "
            f"load average {results['machine']['load_average_1min']:.2f} at start  "
        ),
        f"Command: `{results['command']}`",
        "",
        (
            "| N | patterns | dose | workers | simulation patterns/s | baseline patterns/s | ratio "
            "| simulation patterns/CPU-s | baseline patterns/CPU-s | CPU ratio |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in results["throughput"]:
        lines.append(
            f"| {case['patch_size']} | {case['n_patterns']} | {case['dose_photons']:.0e} | {case['workers']} "
            f"| {case['simulation_patterns_per_s']:.0f} | {case['baseline_patterns_per_s']:.0f} | {case['ratio']:.2f} "
            f"| {case['simulation_patterns_per_cpu_s']:.0f} | {case['baseline_patterns_per_cpu_s']:.0f} "
            f"| {case['cpu_ratio']:.2f} |"
        )
    comparisons = results.get("memory", [])
    if comparisons:
        first = comparisons[0]
        lines += [
            "",
            (
                f"Peak RSS for one dose at N = {first['patch_size']} on a {first['object_size_px']} px "
                "object, each run in a fresh process. Peak RSS is VmHWM from /proc/self/status. RSS before is "
                "the resident size after imports and set-up, just before the stage starts."
            ),
            "",
            (
                "| stage | positions | RSS before MiB | peak RSS MiB | peak minus RSS before MiB | ru_maxrss MiB "
                "| output arrays MiB |"
            ),
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for comparison in comparisons:
            for run in comparison["runs"]:
                lines.append(
                    f"| {run['stage']} | {run['n_positions']} | {run['rss_before_bytes'] / mib:.0f} "
                    f"| {run['peak_rss_bytes'] / mib:.0f} "
                    f"| {(run['peak_rss_bytes'] - run['rss_before_bytes']) / mib:.0f} "
                    f"| {run['ru_maxrss_bytes'] / mib:.0f} | {run['output_arrays_bytes'] / mib:.0f} |"
                )
        lines.append("")
        for comparison in comparisons:
            lines.append(
                f"- {comparison['stage']}: {comparison['position_ratio']:.1f}x the positions, peak RSS grows by "
                f"{comparison['peak_rss_growth_bytes'] / mib:.0f} MiB and the output arrays by "
                f"{comparison['output_arrays_growth_bytes'] / mib:.0f} MiB."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    if arguments.memory_child is not None:
        result = memory_child(
            arguments.memory_stage, arguments.memory_child, arguments.workers, arguments.chunk_patterns
        )
        print(json.dumps(result))
        return

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", sys.argv[0], *sys.argv[1:]]),
        "machine": machine_description(),
        "throughput": [],
    }
    # Memory first: on Linux a child's ru_maxrss starts at its parent's RSS when it is spawned,
    # so the parent should still be small.
    if not arguments.skip_memory:
        results["memory"] = memory_runs(arguments)
    for pair in arguments.sizes.split(","):
        patch_size, n_patterns = (int(value) for value in pair.split(":"))
        for dose in arguments.doses.split(","):
            results["throughput"].append(throughput_case(patch_size, n_patterns, float(dose), arguments))

    report = markdown_report(results)
    print(report)
    write_json(arguments.output_dir / "simulation.json", results)
    write_text(arguments.output_dir / "simulation.md", report)


if __name__ == "__main__":
    main()
