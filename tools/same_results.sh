#!/usr/bin/env bash
# The same small experiment with the code of a checkout: two settings x two seeds, compare, diagnose. Run it on two
# checkouts (git worktree add /tmp/old <commit>) and diff the tables they write: a refactoring must leave every CSV and
# JSON identical but for run ids, times and the store's path. Usage: tools/same_results.sh <checkout> <empty folder>
set -e
W=$1; ROOT=$2
rm -rf "$ROOT"; mkdir -p "$ROOT"; cd "$ROOT"
export MLABEL_EXP_ROOT=$ROOT PYTHONPATH=$W OMP_NUM_THREADS=1
PY=${PYTHON:-python}
COMMON="data.synthetic.num_images=300 data.synthetic.image_size=32 model.input_size=32 trainer.epochs=3 trainer.device=cpu data.num_workers=0 data.cache_dir=$ROOT/cache tracking.experiment=bi diagnostics.activation_maps=0 tracking.log_model=false trainer.amp=false"
for s in 0 1; do $PY -m mlabel_exp.run $COMMON seed=$s dropout=heavy trainer.output_dir=$ROOT/run_a$s > $ROOT/log_a$s.txt 2>&1; done
for s in 0 1; do $PY -m mlabel_exp.run $COMMON seed=$s dropout=none trainer.output_dir=$ROOT/run_b$s > $ROOT/log_b$s.txt 2>&1; done
$PY -m mlabel_exp.compare experiment=bi cost=false out=$ROOT/compare > $ROOT/log_compare.txt 2>&1
$PY -m mlabel_exp.diagnose run=latest tracking.experiment=bi out=$ROOT/diag diagnostics.activation_maps=0 log_to_run=false > $ROOT/log_diag.txt 2>&1
echo done
