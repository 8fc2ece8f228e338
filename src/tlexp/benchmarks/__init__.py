"""tlexp against its physical floor and its peers, in one run, side by side.

Run by ``scripts/benchmark.py`` (flags: ``--help``; results: docs/BENCHMARKS.md). Same model
(tf_efficientnet_lite0, packaged ImageNet weights), data, image size, batch size and threads
everywhere. One module per section, each importable and smoke-tested on a tiny model:

1. ``throughput``: images/s of tlexp ``full`` and ``partial`` (Lightning Trainer in-process,
   progress bar, loggers and checkpointing off) against a hand-written PyTorch loop over the
   same preloaded tensors; plus the fixed per-step overhead measured on a tiny model;
2. ``cache``: ``frozen`` with the feature cache against ``frozen`` without it, per epoch after
   the first and a whole run; plus a second job that loads the cache;
3. ``gradual``: tlexp ``gradual`` against Lightning's ``BackboneFinetuning`` on the same schedule
   (time per epoch, final accuracy); ``depths``: ``partial`` at every frozen depth: step time,
   saved activations and peak memory (max RSS of a fresh process per depth; on CUDA
   ``torch.cuda.max_memory_allocated``);
4. ``sweep``: per-job overhead of a sweep: ``tlexp.train -m`` as a subprocess, time from process
   start and from each job's start to its first training step.

``common`` holds what they share (settings, model, data, Trainer, clocks); ``report`` the
Markdown of docs/BENCHMARKS.md; ``cli`` the command line.
"""
