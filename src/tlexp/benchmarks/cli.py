"""The benchmark's command line (``scripts/benchmark.py``): flags -> ``Settings``, the sections, the report."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from tlexp.benchmarks import __doc__ as ABOUT
from tlexp.benchmarks.cache import section_cache
from tlexp.benchmarks.common import Settings, configure
from tlexp.benchmarks.depths import section_depths
from tlexp.benchmarks.gradual import section_gradual
from tlexp.benchmarks.memory import section_memory
from tlexp.benchmarks.pipeline import section_pipeline
from tlexp.benchmarks.prefix import section_prefix
from tlexp.benchmarks.report import machine, markdown
from tlexp.benchmarks.sweep import section_sweep
from tlexp.benchmarks.throughput import section_throughput

DEFAULT = Settings()


def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=ABOUT.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Results are printed as Markdown (docs/BENCHMARKS.md) and optionally saved as JSON.")
    parser.add_argument("--device", default=DEFAULT.device, help="cpu or cuda")
    parser.add_argument("--data", default=DEFAULT.data, choices=["fashion_mnist", "synthetic"])
    parser.add_argument("--data-root", default=DEFAULT.data_root,
                        help="Fashion-MNIST IDX folder (default: /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--model", default=DEFAULT.model, help="timm model (only the default has packaged weights; others start random)")
    parser.add_argument("--image-size", type=int, default=DEFAULT.image_size)
    parser.add_argument("--batch-size", type=int, default=DEFAULT.batch_size)
    parser.add_argument("--threads", type=int, default=DEFAULT.threads, help="torch threads (1 avoids oversubscription on a shared CPU)")
    parser.add_argument("--steps", type=int, default=DEFAULT.steps, help="measured training steps per throughput run")
    parser.add_argument("--warmup", type=int, default=DEFAULT.warmup)
    parser.add_argument("--repeats", type=int, default=DEFAULT.repeats)
    parser.add_argument("--epochs", type=int, default=DEFAULT.epochs, help="epochs of the cache comparison")
    parser.add_argument("--cache-train-size", type=int, default=DEFAULT.cache_train_size)
    parser.add_argument("--gradual-train-size", type=int, default=DEFAULT.gradual_train_size)
    parser.add_argument("--val-size", type=int, default=DEFAULT.val_size)
    parser.add_argument("--prefix-epochs", type=int, default=DEFAULT.prefix_epochs, help="epochs of each prefix-cache run (section 6)")
    parser.add_argument("--prefix-depths", default=DEFAULT.prefix_depths, help="partial's frozen depths in section 6 (e.g. 5,6; all)")
    parser.add_argument("--probe-steps", type=int, default=DEFAULT.probe_steps)
    parser.add_argument("--sweep-logger", default=DEFAULT.sweep_logger,
                        help="logger group of the sweep jobs (the default config's: wandb, offline)")
    parser.add_argument("--pipeline-images", type=int, default=DEFAULT.pipeline_images, help="images of the generated folder (section 5)")
    parser.add_argument("--pipeline-source-size", type=int, default=DEFAULT.pipeline_source_size, help="their size on disk, px")
    parser.add_argument("--large-folder", type=int, default=DEFAULT.large_folder,
                        help="also measure peak memory over a folder of this many images (e.g. 100000)")
    parser.add_argument("--memory-sizes", default=DEFAULT.memory_sizes,
                        help="unlabeled-set sizes of section 7, comma-separated (all: the whole pool)")
    parser.add_argument("--sections", default=DEFAULT.sections,
                        help="comma-separated: throughput,cache,gradual,sweep,pipeline,prefix,memory")
    parser.add_argument("--json", default=DEFAULT.json, help="also write all numbers to this file")
    return Settings(**vars(parser.parse_args(argv)))


def run(settings: Settings) -> dict:
    """The chosen sections, in order; each one's numbers under its name."""
    started = time.perf_counter()
    results = {"machine": machine(settings), "args": {**asdict(settings), "accelerator": settings.accelerator}}
    sections = settings.sections.split(",")
    print(f"machine: {results['machine']}", flush=True)
    if "throughput" in sections:
        print("1. throughput", flush=True)
        results["throughput"] = section_throughput(settings)
    if "cache" in sections:
        print("2. feature cache", flush=True)
        results["cache"] = section_cache(settings)
    if "gradual" in sections:
        print("3. gradual vs BackboneFinetuning; partial per frozen depth", flush=True)
        results["gradual"] = section_gradual(settings)
        results["depths"] = section_depths(settings)
    if "sweep" in sections:
        print("4. per-job overhead in a sweep", flush=True)
        results["sweep"] = section_sweep(settings)
    if "pipeline" in sections:
        print("5. input pipeline: image folder per worker count, in memory", flush=True)
        results["pipeline"] = section_pipeline(settings)
    if "prefix" in sections:
        print("6. feature cache below the pooled features: partial per frozen depth, gradual", flush=True)
        depths = None if settings.prefix_depths == "all" else [int(depth) for depth in settings.prefix_depths.split(",")]
        results["prefix"] = section_prefix(settings, depths)
    if "memory" in sections:
        print("7. memory of the passes over a whole data set", flush=True)
        results["memory"] = section_memory(settings)
    results["seconds"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> dict:
    settings = parse(argv)
    configure(settings)
    results = run(settings)
    print("\n" + markdown(results, settings))
    if settings.json:
        Path(settings.json).write_text(json.dumps(results, indent=2, default=str))
    return results
