"""Prints side-by-side ratios from Google Benchmark JSON files. Used by scripts/device-check.sh.

eqflow (bench_egnn_gpu) against PyTorch (tools/bench_torch.py):

    python3 tools/compare_bench.py bench_egnn_gpu.json bench_torch.json

the fused kernels (bench_egnn_gpu, BM_EgnnForward_CUDA) against the unfused cuBLAS baseline
(bench_egnn_unfused, BM_EgnnForward_Unfused), same sizes and FLOP formula:

    python3 tools/compare_bench.py --unfused bench_egnn_gpu.json bench_egnn_unfused.json
"""
import json
import sys

UNIT = {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0}


def load(path):
    """name -> benchmark row, with real_time converted to seconds as 'seconds'."""
    rows = {}
    for b in json.load(open(path)).get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        b["seconds"] = b["real_time"] * UNIT[b.get("time_unit", "ms")]
        rows[b["name"]] = b
    return rows


def compare_torch(ours_path, torch_path):
    ours = load(ours_path)
    torch = json.load(open(torch_path))
    B = torch["batch"]
    print(f"{'system':8s} {'op':12s} {'eqflow':>12s} {'pytorch':>12s} {'ratio':>8s}")
    for name, row in torch["systems"].items():
        pairs = [
            ("field", f"BM_EgnnForward_CUDA/{name}/{B}/real_time", row["field_s"]),
            ("divergence", f"BM_EgnnDivergence_CUDA/{name}/{B}/real_time", row["divergence_per_sample_s"] * B),
            ("step fm", f"BM_TrainStep_CUDA/{name}_fm/{B}/real_time", row.get("fm_step_network_s", 0)),
            ("step eqot", f"BM_TrainStep_CUDA/{name}_eqot/{B}/real_time", row.get("fm_step_s", 0)),
        ]
        for op, key, ref in pairs:
            if key in ours and ref > 0:
                t = ours[key]["seconds"]
                print(f"{name:8s} {op:12s} {t*1e3:10.3f}ms {ref*1e3:10.3f}ms {ref/t:7.1f}x")


def compare_unfused(fused_path, unfused_path):
    fused = load(fused_path)
    unfused = load(unfused_path)
    print(f"{'system':8s} {'B':>5s} {'fused':>11s} {'unfused':>11s} {'speedup':>8s} "
          f"{'fused TF/s':>10s} {'unfused TF/s':>12s} {'unfused MB':>10s}")
    for key, u in unfused.items():
        # BM_EgnnForward_Unfused/<system>/<B>/real_time <-> BM_EgnnForward_CUDA/<system>/<B>/real_time
        parts = key.split("/")
        if len(parts) < 3:
            continue
        f = fused.get(key.replace("BM_EgnnForward_Unfused", "BM_EgnnForward_CUDA"))
        if f is None:
            continue
        tf, tu = f["seconds"], u["seconds"]
        print(f"{parts[1]:8s} {parts[2]:>5s} {tf*1e3:9.3f}ms {tu*1e3:9.3f}ms {tu/tf:7.1f}x "
              f"{f.get('FLOP/s', 0)/1e12:10.2f} {u.get('FLOP/s', 0)/1e12:12.2f} "
              f"{u.get('device_MB', 0):10.0f}")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--unfused":
        compare_unfused(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3:
        compare_torch(sys.argv[1], sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
