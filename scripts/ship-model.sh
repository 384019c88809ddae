#!/usr/bin/env bash
# Ships one trained Table 1 cell from scripts/reproduce.sh into models/:
#
#   scripts/ship-model.sh CELL [NAME]     e.g. scripts/ship-model.sh dw4-eqot
#                                                scripts/ship-model.sh dw4-likelihood-kernel dw4-likelihood
#
# Reads the cell $EQFLOW_RUNS/CELL/ of scripts/reproduce.sh (default runs/) and writes, under
# NAME (default CELL),
#   models/NAME.safetensors   the model (self-contained: needs nothing under ../shared)
#   models/NAME.json          the metrics on the paper's held-out data and on eqflow's own
#                             equilibrium data, the training budget (steps, epochs, wall time),
#                             the exact commands, and a short `check`: an eval whose numbers
#                             tests/test_models reruns
#   models/NAME.command.txt   the exact commands that trained and evaluated it
# The check is small (200 samples, 200 test configurations, fixed seed) so that CI can rerun it
# and compare; the full evaluation (10^4 / 2000 samples) is what the metrics report.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${EQFLOW_BIN:-$ROOT/build/default/eqflow}
RUNS=${EQFLOW_RUNS:-$ROOT/runs}
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: scripts/ship-model.sh CELL [NAME]"; exit 2; }
name=${2:-$1}
dir=$RUNS/$1
[ -f "$dir/trained" ] || { echo "ship-model: $dir has no finished training run"; exit 2; }
for f in metrics_paper_test.json metrics_eqflow_test.json; do
    [ -f "$dir/$f" ] || { echo "ship-model: $dir/$f missing (run scripts/reproduce.sh first)"; exit 2; }
done
mkdir -p models
cp "$dir/run/model.safetensors" "models/$name.safetensors.tmp"
mv "models/$name.safetensors.tmp" "models/$name.safetensors"

# The CI check: a small deterministic evaluation of the shipped file on the first 200 rows of
# eqflow's own test data (shipped beside the model so the check needs nothing else).
python3 -c "import numpy as np, sys; np.save(sys.argv[2], np.load(sys.argv[1])[:200])" \
    "$dir/eqflow_test.npy" "models/$name.check_test.npy"
check_args=(eval --model "models/$name.safetensors" --test "models/$name.check_test.npy"
            --out CHECK.json --samples 200 --seed 7 --atol 1e-4 --rtol 1e-4 --device cpu)
run_args=("${check_args[@]/#CHECK.json/$dir/check.json}")
"$BIN" "${run_args[@]}" --figure "$dir/check.svg" > /dev/null

# Paths of this machine out: the program is `eqflow`, cells are under runs/.
sed -E "s|^[^ ]*/eqflow(-run)? |eqflow |; s|$RUNS/|runs/|g; s|$ROOT/||g" "$dir/command.txt" \
    > "models/$name.command.txt"
python3 - "$dir" "$name" "$(uname -m), $(nproc) cores" "${check_args[@]}" <<'PY'
import json, os, sys
d, name, machine, check_args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def load(path):
    with open(path) as h:
        return json.load(h)
keys = ["nll", "nll_normalized", "ess", "path_length", "n_samples", "n_test",
        "energy_mean_samples", "energy_mean_reweighted", "energy_mean_test"]
out = {"model": name + ".safetensors"}
for test in ("paper_test", "eqflow_test"):
    m = load(os.path.join(d, "metrics_%s.json" % test))
    out[test] = {k: m[k] for k in keys if k in m}
log = [json.loads(l) for l in open(os.path.join(d, "run", "train_log.jsonl")) if l.strip()]
steps = [r for r in log if "step" in r]
vals = [r for r in log if "val_loss" in r]
out["training"] = {"steps": steps[-1]["step"], "epochs": steps[-1]["epoch"] + 1,
                   "wall_s": round(steps[-1]["time"], 1), "machine": machine}
if vals:
    out["training"]["val_loss"] = vals[-1]["val_loss"]
out["commands"] = [l.strip() for l in open("models/%s.command.txt" % name) if l.strip()]
out["check"] = {"args": check_args,
                "metrics": {k: v for k, v in load(os.path.join(d, "check.json")).items()
                            if k in ("nll", "ess", "path_length")}}
with open("models/%s.json.tmp" % name, "w") as h:
    json.dump(out, h, indent=2)
    h.write("\n")
os.replace("models/%s.json.tmp" % name, "models/%s.json" % name)
print(json.dumps(out, indent=2))
PY
