"""Entry point: `python train.py strategy=gradual data.fraction=0.1` (see README.md)."""

from tlexp.train import main

if __name__ == "__main__":
    main()
