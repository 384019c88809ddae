#!/usr/bin/env python3
"""Table 1 of Klein, Kraemer & Noe (2023) side by side with the models shipped in models/.

    python3 tools/table1.py [MODELS_DIR]

Reads models/NAME.json (written by scripts/ship-model.sh) and prints a Markdown table: the
paper's NLL / ESS / path length per cell, then eqflow's on the paper's held-out data and on
eqflow's own equilibrium data, with each run's training budget. Standard library only.
"""
import json
import os
import sys

# Table 1 of the paper: NLL (its convention), ESS (%), path length.
PAPER = {
    ("dw4", "likelihood"): (1.72, 86.87, 3.11),
    ("dw4", "ot"): (1.70, 92.37, 2.94),
    ("dw4", "eqot"): (1.68, 88.71, 2.92),
    ("lj13", "likelihood"): (-15.83, 39.78, 5.08),
    ("lj13", "ot"): (-16.09, 54.36, 2.84),
    ("lj13", "eqot"): (-16.07, 57.98, 2.15),
}
ORDER = ["likelihood", "fm", "ot", "eqot"]


def field_of(commands):
    return "kernel" if any("--field kernel" in c for c in commands) else "EGNN"


def main():
    models = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "models")
    rows = []
    for system in ("dw4", "lj13"):
        for objective in ORDER:
            path = os.path.join(models, "%s-%s.json" % (system, objective))
            paper = PAPER.get((system, objective))
            if not os.path.exists(path):
                if paper:
                    rows.append("| %s | %s | %.2f / %.2f%% / %.2f | not trained | | |" %
                                ((system, objective) + paper))
                continue
            with open(path) as f:
                m = json.load(f)
            p, e, t = m["paper_test"], m["eqflow_test"], m["training"]
            paper_cell = "%.2f / %.2f%% / %.2f" % paper if paper else "—"
            rows.append(
                "| %s | %s (%s) | %s | %.3f / %.1f%% / %.3f | %.3f | %d steps (%d epochs), %.0f min, %s |"
                % (system, objective, field_of(m["commands"]), paper_cell, p["nll"],
                   100 * p["ess"], p["path_length"], e["nll"], t["steps"], t["epochs"],
                   t["wall_s"] / 60, t.get("machine", "")))
    print("| system | objective (field) | paper: NLL / ESS / path length | eqflow, paper's "
          "held-out data: NLL / ESS / path length | NLL on eqflow's equilibrium data | budget |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
