"""The benchmark's results as the Markdown of docs/BENCHMARKS.md, and the machine they were measured on."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import lightning
import timm
import torch

from tlexp.benchmarks.common import Settings


def machine(settings: Settings) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "lightning": lightning.__version__, "timm": timm.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg(), "device": settings.device}
    if settings.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def markdown(results: dict, settings: Settings) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, device {m['device']}"
             + (f" ({m['gpu']})" if "gpu" in m else "") + f"; torch {m['torch']}, lightning {m['lightning']}, "
             f"timm {m['timm']}, Python {m['python']}; load average at start {m['load_average'][0]:.1f}.",
             f"Data: {settings.data}, {settings.image_size} px, batch {settings.batch_size}. "
             f"Total benchmark time {results['seconds']:.0f} s.", ""]
    for section, write in (("throughput", _throughput), ("cache", _cache), ("gradual", _gradual), ("sweep", _sweep),
                           ("pipeline", _pipeline), ("prefix", _prefix), ("memory", _memory)):
        if section in results:
            lines += write(results, settings)
    return "\n".join(lines)


def _throughput(results: dict, settings: Settings) -> list[str]:
    t = results["throughput"]
    lines = ["### 1. Training throughput (images/s)", "",
             "| strategy | plain loop, wall | tlexp, wall | ratio (wall) | plain loop, CPU time | tlexp, CPU time | ratio (CPU time) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {t[k]['plain']:.1f} | {t[k]['tlexp']:.1f} | {t[k]['ratio']:.3f} | {t[k]['plain_cpu']:.1f} | "
              f"{t[k]['tlexp_cpu']:.1f} | {t[k]['ratio_cpu']:.3f} |" for k in ("full", "partial")]
    tiny = t["tiny_ms_per_step"]
    return lines + ["", f"Cost per step on a tiny model ({settings.tiny_model}), ms wall / CPU: plain "
                    f"{tiny['plain'][0]:.1f} / {tiny['plain'][1]:.1f}, plain + tlexp's DataLoader {tiny['plain+dataloader'][0]:.1f} / "
                    f"{tiny['plain+dataloader'][1]:.1f}, tlexp {tiny['tlexp'][0]:.1f} / {tiny['tlexp'][1]:.1f}.", ""]


def _cache(results: dict, settings: Settings) -> list[str]:
    c = results["cache"]
    runs = (c["uncached"], c["cached"], c["cached_from_disk"])

    def row(label: str, value, fmt: str, fmt_cached: str | None = None) -> str:
        cells = [format(value(r), fmt if i == 0 else fmt_cached or fmt) for i, r in enumerate(runs)]
        return f"| {label} | " + " | ".join(cells) + " |"

    return ["### 2. Feature cache (frozen)", "", "| | uncached | cached (computed) | cached (from disk) |", "|---|---:|---:|---:|",
            row("epoch 1 (s)", lambda r: r["epoch_s"][0], ".3f"),
            row("later epoch, median (s)", lambda r: r["later_epoch_s"], ".3f", ".4f"),
            row("later epoch, median CPU time (s)", lambda r: r["later_epoch_cpu_s"], ".3f", ".4f"),
            row(f"{settings.epochs}-epoch run (s)", lambda r: r["total_s"], ".2f"),
            row("final val acc", lambda r: r["val_acc"], ".4f"),
            "", f"Per later epoch {c['per_epoch_speedup']:.0f}x faster (CPU time {c['per_epoch_speedup_cpu']:.0f}x); "
            f"whole run {c['run_speedup']:.1f}x "
            f"({c['run_speedup_from_disk']:.1f}x when the cache is on disk); heads allclose: {c['heads_allclose']}.", ""]


def _gradual(results: dict, settings: Settings) -> list[str]:
    g, depths = results["gradual"], results["depths"]
    cuda = "cuda_peak_mb" in depths[0]
    lines = ["### 3. Gradual unfreezing against Lightning's BackboneFinetuning", "",
             "| | epoch times (s) | val acc per epoch |", "|---|---|---|"]
    lines += [f"| {k} | {', '.join(f'{s:.2f}' for s in v['epoch_s'])} | {', '.join(f'{a:.4f}' for a in v['val_acc'])} |"
              for k, v in g.items()]
    lines += ["", "| frozen depth | trainable params | step (s) | step CPU (s) | saved activations (MB) | RSS growth in training (MB) "
              "| max RSS of the process (MB) |"
              + (" CUDA peak (MB) |" if cuda else ""), "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    lines += [f"| {r['depth']} | {r['trainable_params']:,} | {r['step_s']:.3f} | {r['step_cpu_s']:.3f} | {r['saved_activations_mb']:.1f} | "
              f"{r['rss_peak_mb'] - r['rss_before_mb']:.0f} | {r['maxrss_mb']:.0f} |" + (f" {r['cuda_peak_mb']:.0f} |" if cuda else "")
              for r in depths]
    return lines + [""]


def _sweep(results: dict, settings: Settings) -> list[str]:
    s = results["sweep"]
    lines = [f"### 4. Per-job overhead in a sweep (`train.py -m`, logger={s['logger']})", "",
             "| job | job start -> first step (s) | build, loggers, trainer (s) | setup -> train start (s) "
             "| train start -> first step (s) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['job']} | {r['to_first_step_s']:.2f} | {r['build_s']:.2f} | {r['setup_to_train_start_s']:.2f} | "
              f"{r['train_start_to_first_step_s']:.2f} |" for r in s["jobs"]]
    return lines + ["", f"Process start -> first job start {s['process_start_to_first_job_s']:.2f} s (interpreter, imports, Hydra); "
                    f"-> first training step {s['process_start_to_first_step_s']:.2f} s; the whole 4-job sweep {s['total_s']:.1f} s.", ""]


def _pipeline(results: dict, settings: Settings) -> list[str]:
    p = results["pipeline"]
    lines = [f"### 5. Input pipeline ({p['images']} JPEGs of {p['source_px']} px -> {settings.image_size} px, batch {settings.batch_size}; "
             "loader and normalisation only)", "", "| pipeline | training images/s |", "|---|---:|"]
    lines += [f"| image folder, {workers} workers | {w['images_per_s']:.0f} |" for workers, w in p["workers"].items()]
    lines += [f"| in memory (tensors) | {p['in_memory']['images_per_s']:.0f} |", ""]
    if "large_folder" in p:
        large = p["large_folder"]
        lines += [f"A generated folder of {large['images']} images, one epoch with 4 workers: peak memory "
                  f"{large['after']['process_mb']:.0f} MB in the main process (before: {large['before']['process_mb']:.0f} MB), "
                  f"{large['after']['largest_worker_mb']:.0f} MB in the largest worker.", ""]
    return lines


def _prefix(results: dict, settings: Settings) -> list[str]:
    p = results["prefix"]
    lines = [f"### 6. Frozen-prefix cache ({settings.cache_train_size} training images, {settings.prefix_epochs} epochs per run, "
             "cache in memory)", "",
             "| run | epoch, uncached (s) | epoch, cached (s) | epoch speed-up | run, uncached (s) | run, cached (s) | run speed-up | "
             "cache build (s) | cache size (MB) | val acc uncached / cached |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in p["rows"]:
        u, c = r["uncached"], r["cached"]
        later = [statistics.median(x["epoch_s"][1:] or x["epoch_s"]) for x in (u, c)]
        lines.append(f"| {r['label']} | {later[0]:.2f} | {later[1]:.2f} | {r['epoch_speedup']:.1f}x | "
                     f"{u['total_s']:.1f} | {c['total_s']:.1f} | "
                     f"{r['run_speedup']:.2f}x | {c['build_s']:.1f} | {c['cache_mb']:.0f} | {u['val_acc']:.4f} / {c['val_acc']:.4f} |")
    s = p["frozen_depth_sweep"]
    return lines + ["", f"`frozen_depth_sweep` (partial at depths {', '.join(map(str, s['depths']))}): {s['uncached']:.0f} s uncached, "
                    f"{s['cached']:.0f} s cached ({s['speedup']:.2f}x), the runs' sum.", ""]


def _memory(results: dict, settings: Settings) -> list[str]:
    rows = results["memory"]["rows"]
    lines = ["### 7. Memory of the passes over a whole data set", "",
             "Resident memory sampled every 5 ms during each pass, in one process, in this order; growth = peak during the "
             "pass minus the memory held just before it (freed memory of earlier passes is reused, so a later pass can "
             "return data without growing).", "",
             "| pass | images | before (MB) | peak (MB) | growth (MB) | returned (MB) | s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['pass']} | {r['images']:,} | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | {r['growth_mb']:.0f} | "
              f"{r['returned_mb']:.1f} | {r['seconds']:.0f} |" for r in rows]
    return lines + [""]
