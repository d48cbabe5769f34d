"""Rescore a finished arena's distribution columns from its stored sample sets: `python -m analysis.arena.rescore DIR`.

Recomputes FD, precision, recall and FD to the uncached set (`fid.py`) without generating a sample, then rewrites
DIR/arena.json, arena.csv and the report's distribution section (`report.py`).
"""

import argparse
import sys

from analysis.arena.fid import REFERENCE_SAMPLES, rescore_rows
from analysis.arena.report import rewrite_tables


def rescore(out: str, reference_samples: int = REFERENCE_SAMPLES) -> list[dict]:
    """Rescore DIR's distribution columns and write them back; returns the rescored rows."""
    data, rows = rescore_rows(out, reference_samples)
    rewrite_tables(out, data)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.arena.rescore", description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="DIR", help="an arena output folder run with --fid")
    p.add_argument("--fid-reference", type=int, default=REFERENCE_SAMPLES, help="fresh renders in the reference set")
    args = p.parse_args(argv)
    try:
        rows = rescore(args.out, args.fid_reference)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for row in rows:
        print(f"{row['policy']} {row['setting']}: FD {row['fid']:.2f}, FD vs uncached {row['fd_vs_uncached']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
