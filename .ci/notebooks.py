"""Execute every notebook of nbs/ as `nbdev_test` does, two at a time, the longest first; exit 1 if any fails.

Each notebook runs through `nbdev.test.test_nb`, the function `nbdev_test` runs, with the same skip flags
(`tst_flags` in settings.ini), in the same working directory, each in its own process. The one difference is the
order. `nbdev_test` hands out notebooks in name order, so a long one that comes late (12_metrics) keeps one core busy
while the other idles at the end; on 2 cores that cost about half a minute of `make test`. Here the notebooks
that train start first, in the order of their measured times (the table this script prints), and the short ones
fill in around them.
  python .ci/notebooks.py [--workers 2] [NOTEBOOK ...]
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.test import _keep_file, test_nb

# the notebooks that train, longest first (seconds measured by `make test` on 2 cores, 2026-12-03: 143, 95, 92, 78, 76, 75, 34)
LONGEST_FIRST = ['12_metrics', '09_pix2pix', '10_cyclegan', '13_experiments', '08_gan', '07_unet', '11_translate']


def order(files:list[Path]) -> list[Path]:
    "The notebooks of LONGEST_FIRST in its order, then the others by name."
    rank = {n: i for i, n in enumerate(LONGEST_FIRST)}
    return sorted(files, key=lambda f: (rank.get(f.stem, len(rank)), f.name))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('notebooks', nargs='*', type=Path, help='notebooks to run (default: every notebook of nbs/)')
    ap.add_argument('--workers', type=int, default=2)
    a = ap.parse_args(argv)
    cfg = get_config()
    files = [f.absolute() for f in (a.notebooks or sorted(cfg.nbs_path.glob('*.ipynb'))) if _keep_file(f, '.notest')]
    files = order(files)
    with working_directory(cfg.nbs_path), ProcessPoolExecutor(a.workers) as pool:
        jobs = [pool.submit(test_nb, f, skip_flags=cfg.tst_flags.split(), force_flags=[], basepath=cfg.config_path)
                for f in files]
        results = [j.result() for j in jobs]
    failed = [f.name for f, (ok, _) in zip(files, results) if not ok]
    for f, (_, t) in sorted(zip(files, results), key=lambda o: o[1][1], reverse=True): print(f"{f.name}: {int(t)} secs")
    if failed:
        sys.stderr.write('\nNotebooks that failed:\n' + '=' * 50 + '\n\t' + '\n\t'.join(failed) + '\n')
        return 1
    print(f"Success: {len(files)} notebooks.")
    return 0


if __name__ == '__main__':
    sys.exit(main())
