"""Prints eqflow-vs-PyTorch ratios from a Google Benchmark JSON (bench_egnn_gpu) and the JSON of
tools/bench_torch.py. Used by scripts/device-check.sh.

    python3 tools/compare_bench.py bench_egnn_gpu.json bench_torch.json
"""
import json
import sys


def main():
    ours = json.load(open(sys.argv[1]))
    torch = json.load(open(sys.argv[2]))
    B = torch["batch"]
    times = {}
    for b in ours.get("benchmarks", []):
        times[b["name"]] = b["real_time"] * {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0}[b.get("time_unit", "ms")]
    print(f"{'system':8s} {'op':12s} {'eqflow':>12s} {'pytorch':>12s} {'ratio':>8s}")
    for name, row in torch["systems"].items():
        pairs = [
            ("field", f"BM_EgnnForward_CUDA/{name}/{B}/real_time", row["field_s"]),
            ("divergence", f"BM_EgnnDivergence_CUDA/{name}/{B}/real_time", row["divergence_per_sample_s"] * B),
        ]
        for op, key, ref in pairs:
            if key in times:
                print(f"{name:8s} {op:12s} {times[key]*1e3:10.3f}ms {ref*1e3:10.3f}ms {ref/times[key]:7.1f}x")


if __name__ == "__main__":
    main()
