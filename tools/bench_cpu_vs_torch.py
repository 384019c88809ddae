"""eqflow's CPU backends against the PyTorch reference implementation, side by side in one run.

Runs bench/bench_field_cpu (Google Benchmark: the fast float32 field and the double reference,
one thread) and tools/bench_torch.py (PyTorch on the CPU, one thread) one after the other on the
same cores, then prints a table with the ratios. Pin it to one core for the issue's numbers:

    taskset -c 0 python3 tools/bench_cpu_vs_torch.py --bench build/cpu/bench/bench_field_cpu \
        --out bench_cpu.json

Sizes: DW4 and LJ13 (H 32, L 3) at B 256, LJ55 (H 64, L 7) at B 64, as bench_field_cpu. Times
are wall-clock seconds (both sides), the best of PyTorch's repeats and Google Benchmark's mean;
run it on a quiet machine (`uptime`) and repeat.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run_eqflow(binary, repetitions, clock):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [binary, "--benchmark_format=console", f"--benchmark_out={path}",
           "--benchmark_out_format=json"]
    if repetitions > 1:
        cmd += [f"--benchmark_repetitions={repetitions}", "--benchmark_report_aggregates_only=true"]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    with open(path) as f:
        data = json.load(f)
    os.unlink(path)
    out = {}
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    for b in data["benchmarks"]:
        name = b.get("run_name", b["name"])
        if b.get("aggregate_name", "mean") != "mean":
            continue
        # BM_Field_Fast/lj13_forward -> ("fast", "lj13", "forward")
        kind, what = name.split("/")[0], name.split("/")[1]
        backend = "fast" if kind.endswith("_Fast") else "reference"
        system, op = what.split("_", 1)
        t = b["real_time"] if clock == "wall" else b["cpu_time"]
        per_iter = t * scale[b["time_unit"]]
        # per_sample is CPU seconds (a rate counter over CPU time): rescale it for wall time.
        per_sample = b["per_sample"] * (t / b["cpu_time"])
        out[(backend, system, op)] = {"s": per_iter, "per_sample_s": per_sample,
                                      "cpu_s": b["cpu_time"] * scale[b["time_unit"]]}
    return out


def run_torch(systems, batch, pairs, clock, div_batch):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(HERE, "bench_torch.py"), "--out", path, "--device", "cpu",
           "--batch", str(batch), "--systems", systems, "--pairs", str(pairs), "--clock", clock,
           "--div-batch", str(div_batch)]
    subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)
    with open(path) as f:
        data = json.load(f)
    os.unlink(path)
    return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="build/cpu/bench/bench_field_cpu")
    ap.add_argument("--out", help="write all numbers as JSON here")
    ap.add_argument("--repetitions", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=500, help="eqot pairs PyTorch's side solves")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall-clock or CPU seconds on both sides (cpu: steadier on a loaded machine)")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    print(f"CPUs in this process's affinity mask: {cpus}", file=sys.stderr)
    eq = run_eqflow(args.bench, args.repetitions, args.clock)
    torch_small = run_torch("dw4,lj13", 256, args.pairs, args.clock, 32)
    # PyTorch's LJ55 divergence (165 autograd passes) takes minutes at 32 rows: 8 rows.
    torch_big = run_torch("lj55", 64, args.pairs, args.clock, 8)
    torch_rows = dict(torch_small["systems"], **torch_big["systems"])

    rows = []
    for system in ("dw4", "lj13", "lj55"):
        t = torch_rows[system]
        entries = [
            ("forward (batch)", eq[("fast", system, "forward")]["s"],
             eq[("reference", system, "forward")]["s"], t["field_s"]),
            ("backward (batch)", eq[("fast", system, "backward")]["s"],
             eq[("reference", system, "backward")]["s"], None),
            ("training step, fm", eq[("fast", system, "fm")]["s"],
             eq[("reference", system, "fm")]["s"], t["fm_step_network_s"]),
        ]
        if ("fast", system, "fm_plain") in eq:  # the step through forward, then backward
            entries.append(("  step, forward then backward", eq[("fast", system, "fm_plain")]["s"],
                            eq[("reference", system, "fm")]["s"], t["fm_step_network_s"]))
        entries += [
            ("exact divergence, per sample", eq[("fast", system, "divergence")]["per_sample_s"],
             eq[("reference", system, "divergence")]["per_sample_s"],
             t["divergence_per_sample_s"]),
        ]
        for work, fast, ref, torch in entries:
            rows.append({"system": system, "work": work, "fast_s": fast, "reference_s": ref,
                         "torch_s": torch})
    print(f"\ntorch {torch_small['torch']}, one thread; eqflow fast (float32) and reference "
          f"(double), one thread; CPUs {cpus}; {args.clock} clock; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'system':6} {'work':30} {'fast':>10} {'reference':>10} {'PyTorch':>10} "
          f"{'ref/fast':>9} {'torch/fast':>10}")
    for r in rows:
        torch = r["torch_s"]
        print(f"{r['system']:6} {r['work']:30} {r['fast_s']*1e3:9.3f}ms {r['reference_s']*1e3:9.2f}ms "
              + (f"{torch*1e3:9.2f}ms" if torch else f"{'-':>11}")
              + f" {r['reference_s']/r['fast_s']:8.1f}x"
              + (f" {torch/r['fast_s']:9.1f}x" if torch else f" {'-':>10}"))
    for system in ("dw4", "lj13", "lj55"):
        t = torch_rows[system]
        print(f"{system}: PyTorch's eqot coupling (SciPy assignment + Kabsch per pair, "
              f"{t['eqot_pairs_timed']} pairs timed, scaled to B^2): {t['eqot_coupling_s']*1e3:.0f} ms")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cpus": cpus, "clock": args.clock, "torch": torch_small["torch"], "rows": rows,
                       "torch_raw": torch_rows,
                       "eqflow_raw": {"/".join(k): v for k, v in eq.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
