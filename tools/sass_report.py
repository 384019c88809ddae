"""Per-kernel resource and instruction report from the sm_90 machine code (no GPU needed).

Reads, for each kernel file given, the ptxas -v log (registers, stack frame, spills) and the
cuobjdump -sass listing, and prints one row per kernel: registers, stack bytes, local-memory
instructions (LDL/STL), static counts of FFMA (FFMA2 counted as two), HMMA (tensor-core
instructions, counted in the ratio as their FMAs per thread: m*n*k / 32, e.g. 128 for an
m16n8k16), LDS (shared loads of any width) and shared loads per FMA. Static counts: instructions in the code,
not executed ones; the ratio is a lower bound on what the hot loops see when the loops are the
bulk of the code, which they are in the EGNN kernels.

    python3 tools/sass_report.py --ptxas LOG --sass SASS [--filter egnn]

scripts/sass-report.sh compiles the kernels and calls this.
"""
import argparse
import re
import sys

# FMAs per thread of one warp-wide HMMA, by shape (m*n*k / 32 threads).
HMMA_FMAS = {"16816": 16 * 8 * 16 // 32, "1688": 16 * 8 * 8 // 32, "884": 8 * 8 * 4 // 32}
# Mangled template arguments that are not integers.
TYPE_ARGS = {"d": "double", "f": "float", "Lb0E": "false", "Lb1E": "true"}


def short(name):
    """The kernel's own identifier out of an Itanium-mangled name (a length-prefixed part that
    ends in 'kernel'), with its template arguments when they are integers, bools or float /
    double (egnn_forward_kernel<64,3>, assignment_block_kernel<double,4>), else the name cut to
    60 characters."""
    for m in re.finditer(r"\d+", name):
        digits, start = m.group(0), m.end()
        for k in range(len(digits)):  # a hash may run into the length: try every suffix
            length = int(digits[k:])
            ident = name[start:start + length]
            if len(ident) == length and ident.endswith("kernel"):
                targs = re.match(r"I((?:Li-?\d+E|Lb[01]E|[df])+)E", name[start + length:])
                if targs:
                    args = [TYPE_ARGS.get(a, a[2:-1]) for a in
                            re.findall(r"Li-?\d+E|Lb[01]E|[df]", targs.group(1))]
                    ident += "<" + ",".join(args) + ">"
                return ident
    return name[:60]


def parse_ptxas(text):
    res = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
            res.setdefault(current, {})
            continue
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = m.group(1)
            res.setdefault(current, {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            res[current].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            res[current]["regs"] = int(m.group(1))
    return res


def parse_sass(text):
    kernels = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = m.group(1)
            kernels[current] = {"FFMA": 0, "HMMA": 0, "HMMA_FMAS": 0, "LDS": 0, "LDL": 0, "STL": 0, "FFMA2": 0}
            continue
        if current is None:
            continue
        m = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)(\.[A-Z0-9_.]+)?", line)
        if not m:
            continue
        op, mod = m.group(1), (m.group(2) or "")
        k = kernels[current]
        if op == "FFMA":
            k["FFMA"] += 1
        elif op == "FFMA2":
            k["FFMA2"] += 1
        elif op == "HMMA":
            k["HMMA"] += 1
            shape = re.search(r"\.(\d{3,5})\.", mod + ".")
            k["HMMA_FMAS"] += HMMA_FMAS.get(shape.group(1) if shape else "", 64)
        elif op == "LDS":
            k["LDS"] += 1
        elif op == "LDL":
            k["LDL"] += 1
        elif op == "STL":
            k["STL"] += 1
    return kernels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ptxas", action="append", default=[])
    ap.add_argument("--sass", action="append", default=[])
    ap.add_argument("--filter", default="")
    a = ap.parse_args()
    props = {}
    for p in a.ptxas:
        props.update(parse_ptxas(open(p).read()))
    kernels = {}
    for s in a.sass:
        kernels.update(parse_sass(open(s).read()))
    print(f"{'kernel':34s} {'regs':>4s} {'stack':>5s} {'LDL/STL':>7s} {'FFMA':>6s} {'HMMA':>5s} "
          f"{'LDS':>5s} {'LDS/FMA':>7s}")
    for name in sorted(kernels, key=short):
        if a.filter and a.filter not in name:
            continue
        k = kernels[name]
        p = props.get(name, {})
        fmas = k["FFMA"] + 2 * k["FFMA2"] + k["HMMA_FMAS"]
        ratio = f"{k['LDS'] / fmas:7.2f}" if fmas else "      -"
        print(f"{short(name):34s} {p.get('regs', 0):4d} {p.get('stack', 0):5d} "
              f"{k['LDL'] + k['STL']:7d} {k['FFMA'] + 2 * k['FFMA2']:6d} {k['HMMA']:5d} "
              f"{k['LDS']:5d} {ratio}")


if __name__ == "__main__":
    sys.exit(main())
