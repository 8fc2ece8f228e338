"""The benchmark (``scripts/benchmark.py``, ``tlexp.benchmarks``): every section runs on the tiny model.

Smoke tests: each section on ``test_efficientnet`` and synthetic data, a few steps, 32 px. Speed
numbers are not asserted (they mean nothing at this size or on a shared CPU); correctness is: the
cached head equals the uncached one, deeper freezing saves fewer activations, the Markdown keeps
the format of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import pytest
import torch

from tlexp.benchmarks import cli, depths, report, sweep
from tlexp.benchmarks.cache import section_cache
from tlexp.benchmarks.common import Settings, configure, make_backbone, make_data
from tlexp.benchmarks.gradual import EPOCHS, section_gradual
from tlexp.benchmarks.throughput import section_throughput

from conftest import REPO

TINY = Settings(data="synthetic", model="test_efficientnet", image_size=32, batch_size=8, steps=3, warmup=2, repeats=1,
                epochs=2, cache_train_size=48, gradual_train_size=32, val_size=16, probe_steps=3, sweep_logger="csv",
                tiny_steps=5, tiny_warmup=2)
BENCHMARKS_MD = (REPO / "docs" / "BENCHMARKS.md").read_text()


@pytest.fixture(scope="module", autouse=True)
def benchmark_process():
    """What ``configure`` gives a benchmark process (one torch thread: several threads on a shared CPU
    make these tiny runs 20x slower), undone for the other tests."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "tlexp")
    threads, levels = torch.get_num_threads(), {name: logging.getLogger(name).level for name in names}
    configure(TINY)
    yield
    torch.set_num_threads(threads)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def positive(*values) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values)


@pytest.fixture(scope="module")
def benchmark_results() -> dict:
    """Sections 1-3 on the tiny model (section 3b in this process: a fresh one per depth is the slow test)."""
    out = {"machine": report.machine(TINY), "seconds": 1.0}
    out["throughput"] = section_throughput(TINY)
    out["cache"] = section_cache(TINY)
    out["gradual"] = section_gradual(TINY)
    datamodule = make_data(TINY, make_backbone(TINY.model), TINY.batch_size, 16)
    images = datamodule.normalize(datamodule.train_set.images[: TINY.batch_size])
    out["depths"] = [{**depths.probe_depth(TINY, depth), "saved_activations_mb": depths.saved_activation_mb(TINY, depth, images)}
                     for depth in (0, 3, 6)]
    return out


@pytest.mark.slow
def test_throughput(benchmark_results):
    t = benchmark_results["throughput"]
    for strategy in ("full", "partial"):
        assert positive(*(t[strategy][k] for k in ("plain", "tlexp", "ratio", "plain_cpu", "tlexp_cpu", "ratio_cpu")))
    assert set(t["tiny_ms_per_step"]) == {"plain", "plain+dataloader", "tlexp"}
    assert all(positive(*ms) for ms in t["tiny_ms_per_step"].values())


@pytest.mark.slow
def test_cache_trains_the_same_head(benchmark_results):
    c = benchmark_results["cache"]
    assert c["heads_allclose"] is True
    for run in ("uncached", "cached", "cached_from_disk"):
        assert len(c[run]["epoch_s"]) == TINY.epochs and 0 <= c[run]["val_acc"] <= 1
    assert c["cached"]["val_acc"] == pytest.approx(c["uncached"]["val_acc"], abs=1e-6)


@pytest.mark.slow
def test_gradual_against_backbone_finetuning(benchmark_results):
    g = benchmark_results["gradual"]
    assert set(g) == {"tlexp_gradual", "lightning_backbone_finetuning"}
    assert all(len(v["epoch_s"]) == EPOCHS and len(v["val_acc"]) == EPOCHS for v in g.values())


@pytest.mark.slow
def test_depths_in_process(benchmark_results):
    rows = benchmark_results["depths"]
    params = [r["trainable_params"] for r in rows]
    saved = [r["saved_activations_mb"] for r in rows]
    assert params[0] > params[1] > params[2] and saved[0] > saved[1] > saved[2]
    assert all(positive(r["step_s"], r["rss_peak_mb"], r["maxrss_mb"]) for r in rows)


@pytest.mark.slow
def test_markdown_keeps_the_format_of_docs_benchmarks(benchmark_results):
    results = {**benchmark_results, "sweep": sweep.summarize(stamps(), started=100.0, ended=130.0, logger="csv")}
    text = report.markdown(results, TINY)
    # every heading and table header is the one docs/BENCHMARKS.md shows
    lines = text.splitlines()
    headers = [above for above, line in zip(lines, lines[1:]) if line.startswith("|---")]
    structure = [line for line in lines if line.startswith("###") or line.startswith("|---")] + headers
    assert len(structure) == 4 + 2 * 5
    for line in structure:
        assert line.replace("logger=csv", "logger=wandb") in BENCHMARKS_MD, line
    assert text.startswith("Machine: ") and "Data: synthetic, 32 px, batch 8." in text
    assert "| 0 | " in text and "| 6 | " in text and "heads allclose: True" in text


def stamps() -> str:
    """What the four jobs of a sweep print, 1 s apart per event."""
    lines, clock = ["Hydra says hello"], 101.0
    for strategy in ("frozen", "full"):
        for lr in ("0.01", "0.02"):
            lines.append(f"{sweep.MARK} job_start {clock:.6f} strategy.lr_head={lr},strategy={strategy}")
            for event in ("setup", "train_start", "first_step"):
                clock += 1
                lines.append(f"{sweep.MARK} {event} {clock:.6f} ")
            clock += 1
    return "\n".join(lines)


def test_sweep_timings_from_the_stamps():
    result = sweep.summarize(stamps(), started=100.0, ended=130.0, logger="csv")
    assert [r["job"] for r in result["jobs"]] == [
        "strategy=frozen strategy.lr_head=0.01 (feature cache cold)", "strategy=frozen strategy.lr_head=0.02 (cache warm)",
        "strategy=full strategy.lr_head=0.01", "strategy=full strategy.lr_head=0.02"]
    assert all(r["to_first_step_s"] == pytest.approx(3.0) and r["build_s"] == pytest.approx(1.0) for r in result["jobs"])
    assert result["process_start_to_first_job_s"] == pytest.approx(1.0) and result["total_s"] == 30.0


def test_cli_flags_and_a_run(tmp_path, capsys):
    assert cli.parse([]) == Settings()
    assert cli.parse(["--device", "cuda", "--threads", "8", "--batch-size", "128"]).accelerator == "gpu"
    out = tmp_path / "out.json"
    flags = ["--data", "synthetic", "--model", "test_efficientnet", "--image-size", "32", "--batch-size", "8",
             "--epochs", "2", "--cache-train-size", "32", "--val-size", "16", "--sections", "cache", "--json", str(out)]
    assert cli.parse(flags) == replace(Settings(), data="synthetic", model="test_efficientnet", image_size=32, batch_size=8,
                                       epochs=2, cache_train_size=32, val_size=16, sections="cache", json=str(out))
    results = cli.main(flags)
    assert set(results) == {"machine", "args", "cache", "seconds"}
    assert "### 2. Feature cache (frozen)" in capsys.readouterr().out
    assert json.loads(out.read_text())["cache"]["heads_allclose"] is True


@pytest.mark.slow
def test_depths_in_fresh_processes():
    rows = depths.section_depths(TINY, depths=[0, 6])
    assert [r["depth"] for r in rows] == [0, 6] and rows[0]["trainable_params"] > rows[1]["trainable_params"]
    assert all(r["maxrss_mb"] >= r["maxrss_before_mb"] > 0 for r in rows)


@pytest.mark.slow
def test_sweep_section_runs_train_with_the_stamps():
    result = sweep.section_sweep(TINY)
    assert len(result["jobs"]) == 4 and result["logger"] == "csv"
    assert all(r["to_first_step_s"] > 0 for r in result["jobs"])


def test_pipeline_section_reads_a_generated_folder_with_each_worker_count():
    from tlexp.benchmarks.pipeline import section_pipeline

    settings = replace(TINY, pipeline_images=60, pipeline_source_size=16, large_folder=40)
    result = section_pipeline(settings)
    train_images = 60 - 10  # 10 held out for validation (one per class)
    for run in (*result["workers"].values(), result["in_memory"]):
        assert positive(run["images_per_s"]) and 0 < run["images"] < train_images
    assert sorted(result["workers"]) == [0, 2, 4]
    assert result["large_folder"]["after"]["process_mb"] > 0
    text = report._pipeline({"pipeline": result}, settings)
    assert text[0].startswith("### 5. Input pipeline") and sum("workers |" in line for line in text) == 3


@pytest.mark.slow
def test_prefix_section_pairs_cached_and_uncached_runs():
    from dataclasses import replace

    from tlexp.benchmarks.prefix import section_prefix
    settings = replace(TINY, prefix_epochs=2)
    result = section_prefix(settings, depths=[0, 3])
    labels = [r["label"] for r in result["rows"]]
    assert labels[:2] == ["partial, frozen depth 0", "partial, frozen depth 3"] and labels[2].startswith("gradual")
    depth0, depth3, gradual = result["rows"]
    assert not depth0["cached"]["enabled"] and depth3["cached"]["enabled"] and gradual["cached"]["enabled"]
    assert depth3["cached"]["cache_mb"] > 0 and positive(depth3["epoch_speedup"], gradual["run_speedup"])
    assert all(len(r[run]["epoch_s"]) == 2 for r in result["rows"] for run in ("uncached", "cached"))
    assert result["frozen_depth_sweep"]["depths"] == [0, 3]
    text = report.markdown({"machine": report.machine(settings), "seconds": 1.0, "prefix": result}, settings)
    header = next(line for line in text.splitlines() if line.startswith("| run |"))
    assert header in BENCHMARKS_MD and "### 6. Frozen-prefix cache" in BENCHMARKS_MD


def test_memory_section_measures_each_pass_at_each_size():
    from tlexp.benchmarks.memory import section_memory

    settings = replace(TINY, memory_sizes="40,80")
    rows = section_memory(settings)["rows"]
    assert [(r["pass"], r["images"]) for r in rows] == [
        ("pseudo-label prediction", 40), ("feature encoding", 40), ("pseudo-label prediction before the fix", 40),
        ("pseudo-label prediction", 80), ("feature encoding", 80)]
    assert all(r["peak_mb"] >= r["before_mb"] > 0 for r in rows)
    assert [r["requires_grad"] for r in rows] == [False, False, True, False, False]  # the old pass kept graphs
    text = report.markdown({"machine": report.machine(settings), "seconds": 1.0, "memory": {"rows": rows}}, settings)
    header = next(line for line in text.splitlines() if line.startswith("| pass |"))
    assert header in BENCHMARKS_MD and "### 7. Memory of the passes" in BENCHMARKS_MD
