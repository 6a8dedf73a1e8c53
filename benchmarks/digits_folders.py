"""Write scikit-learn's real handwritten digits as the two image folders the digits benchmarks read.

    python benchmarks/digits_folders.py data/digits      # data/digits/{source,target}/{train,test}/<digit>/*.png

Source task: digits 0-4; target task: digits 5-9; a fixed stratified 30% of every class in test/ (the same
folders benchmarks/verdict_check.py builds for its digits case, by the same function).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from verdict_check import build_digits, digits_missing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="the folder to write (source/ and target/ inside)")
    args = p.parse_args()
    missing = digits_missing()
    if missing:
        raise SystemExit(missing)
    print(json.dumps(build_digits(args.root), indent=2))


if __name__ == "__main__":
    main()
