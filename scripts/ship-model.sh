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
#
#   scripts/ship-model.sh --check NAME    records the check of a shipped model again (after a
#                                         change of the check's arguments or of the numerics)
#
# The check is small (200 samples, 200 test configurations, fixed seed) so that CI can rerun it
# and compare; the full evaluation (10^4 / 2000 samples, dopri5) is what the metrics report. The
# check integrates with fixed RK4 steps, not dopri5: an adaptive solver's accept/reject decisions
# flip under rounding changes (another SIMD width, another compiler), and a flipped step moves a
# sample by the solver's tolerance, so its weight, and the ESS of 200 samples, jumps (lj13-fm:
# dopri5's ESS 0.254 at atol 1e-4, 0.284 at atol 1.001e-4). With fixed steps the numbers move by
# rounding only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${EQFLOW_BIN:-$ROOT/build/default/eqflow}
RUNS=${EQFLOW_RUNS:-$ROOT/runs}

# record_check NAME META_IN META_OUT: runs the check on models/NAME.* and writes META_IN with
# the check's arguments and numbers ("check") to META_OUT (replaced only once the check ran).
record_check() {
    local name=$1 meta_in=$2 meta_out=$3 tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"; trap - RETURN' RETURN
    local check_args=(eval --model "models/$name.safetensors" --test "models/$name.check_test.npy"
                      --out CHECK.json --samples 200 --seed 7 --solver rk4 --steps 20
                      --device cpu)
    "$BIN" "${check_args[@]/#CHECK.json/$tmp/check.json}" --figure "$tmp/check.svg" > /dev/null
    python3 - "$tmp/check.json" "$meta_in" "$meta_out" "${check_args[@]}" <<'PY'
import json, os, sys
check, meta_in, meta_out, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with open(check) as h:
    got = json.load(h)
with open(meta_in) as h:
    meta = json.load(h)
meta["check"] = {"args": args,
                 "metrics": {k: got[k] for k in ("nll", "ess", "path_length")}}
with open(meta_out + ".tmp", "w") as h:
    json.dump(meta, h, indent=2)
    h.write("\n")
os.replace(meta_out + ".tmp", meta_out)
print(json.dumps(meta["check"], indent=2))
PY
}

if [ "${1:-}" = "--check" ]; then
    [ $# -eq 2 ] || { echo "usage: scripts/ship-model.sh --check NAME"; exit 2; }
    [ -f "models/$2.json" ] || { echo "ship-model: models/$2.json not found"; exit 2; }
    record_check "$2" "models/$2.json" "models/$2.json"
    exit 0
fi
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

# Paths of this machine out: the program is `eqflow`, cells are under runs/.
sed -E "s|^[^ ]*/eqflow(-run)? |eqflow |; s|$RUNS/|runs/|g; s|$ROOT/||g" "$dir/command.txt" \
    > "models/$name.command.txt"
python3 - "$dir" "$name" "$(uname -m), $(nproc) cores" <<'PY'
import json, os, sys
d, name, machine = sys.argv[1], sys.argv[2], sys.argv[3]
def load(path):
    with open(path) as h:
        return json.load(h)
keys = ["nll", "nll_normalized", "ess", "path_length", "n_samples", "n_test",
        "energy_mean_samples", "energy_mean_reweighted", "energy_mean_test",
        # error bars and the NLL's split (evaluations from 2026-12-03 on)
        "nll_stderr", "ess_stderr", "path_length_stderr", "kl_test", "kl_test_stderr",
        "entropy_test", "log_z"]
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
with open("models/%s.json.new" % name, "w") as h:
    json.dump(out, h, indent=2)
    h.write("\n")
print(json.dumps(out, indent=2))
PY
# models/NAME.json is replaced only with the check in it.
record_check "$name" "models/$name.json.new" "models/$name.json"
rm -f "models/$name.json.new"
