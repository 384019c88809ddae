"""The `eqflow` command installed with the package: runs the command-line program shipped
inside it (eqflow/bin/eqflow), with EQFLOW_DATA_DIR pointing at the package's data."""
import os
import sys


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    program = os.path.join(here, "bin", "eqflow")
    if not os.path.isfile(program):
        sys.stderr.write("eqflow: this installation has no command-line program "
                         f"({program} is missing)\n")
        return 2
    data = os.path.join(here, "data")
    if os.path.isdir(os.path.join(data, "aldp")):
        os.environ.setdefault("EQFLOW_DATA_DIR", data)
    os.execv(program, [program] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
