"""`python -m benchmarks [--suite quick|full|TOPIC ...] [--out DIR]`: the same as `wse bench`."""
import sys

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
