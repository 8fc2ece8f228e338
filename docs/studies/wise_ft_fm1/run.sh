#!/bin/bash
# The FM 1 % race's full and lpft confirmations again (same settings, seeds 0-2), keeping checkpoints, then WiSE-FT.
cd "$(dirname "$0")/../../.."  # the repository root
export OMP_NUM_THREADS=1
COMMON="data=fashion_mnist data.fraction=0.01 trainer.max_epochs=8 trainer.enable_progress_bar=false logger=csv seed=0,1,2"
.venv/bin/python train.py -m $COMMON strategy=full strategy.lr_head=0.0005942873784745223 strategy.lr_backbone=0.00028836604408046836 strategy.optimizer.weight_decay=0.013560853487480533 hydra.sweep.dir=/tmp/wise_fm1/full
.venv/bin/python train.py -m $COMMON data.unlabeled_limit=2000 strategy=lpft strategy.lr_head=0.0003754553966912878 strategy.lr_backbone=0.0007350659626187653 strategy.lr_probe=0.0020567581032456066 strategy.probe_epochs=2 strategy.optimizer.weight_decay=0.013179630432958693 hydra.sweep.dir=/tmp/wise_fm1/lpft
.venv/bin/tlexp-wise-ft $(dirname /tmp/wise_fm1/*/*/result.json)
for d in $(dirname /tmp/wise_fm1/*/*/result.json); do cp $d/wise_ft.json $d/wise_ft_chosen.json; done
.venv/bin/tlexp-wise-ft --alphas 0.5 $(dirname /tmp/wise_fm1/*/*/result.json)
for d in $(dirname /tmp/wise_fm1/*/*/result.json); do mv $d/wise_ft.json $d/wise_ft_a05.json; mv $d/wise_ft_chosen.json $d/wise_ft.json; done
echo DONE
