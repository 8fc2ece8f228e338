"""tlexp against its physical floor and its peers, in one run, side by side.

    .venv/bin/python scripts/benchmark.py                      # CPU, Fashion-MNIST, < 10 min
    .venv/bin/python scripts/benchmark.py --device cuda --threads 8 --batch-size 128
    .venv/bin/python scripts/benchmark.py --data synthetic --json results.json

The sections live in ``tlexp.benchmarks`` (one module each); ``--help`` lists the flags.
Results are printed as Markdown (copy them into docs/BENCHMARKS.md) and optionally saved as JSON.
"""

from tlexp.benchmarks.cli import main

if __name__ == "__main__":
    main()
