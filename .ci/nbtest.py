#!/usr/bin/env python
"""Test every notebook as `nbdev_test --n_workers 2 --timing` does, the slowest first.

nbdev_test hands the notebooks to its workers in name order, so the long experiment chapters (12, 13, 14) start
last and one of them runs alone at the end. Handing them out longest first (measured seconds, `NB_SECONDS`; the
greedy longest-processing-time rule) keeps both workers busy to the end. Everything else is nbdev's own: the same
`test_nb`, the config's skip flags, the notebooks folder as the working directory.

    python .ci/nbtest.py [n_workers]
"""
import sys

from fastcore.parallel import parallel
from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.test import _keep_file, nbglob, test_nb

# seconds per notebook under `make test` (clean clone, 2 cores, 2026-12-04); notebooks not listed go last, in name order
NB_SECONDS = {'16_progressive.ipynb': 150, '12_metrics.ipynb': 137, '09_pix2pix.ipynb': 108, '14_strategies.ipynb': 107, '10_cyclegan.ipynb': 106,
              '13_experiments.ipynb': 83, '08_gan.ipynb': 75, '07_unet.ipynb': 74, '11_translate.ipynb': 37,
              '08_baselines.ipynb': 20, '01_phantom.ipynb': 16, '15_table1.ipynb': 14, '05_data.ipynb': 9}


def main(n_workers:int=2) -> int:
    cfg = get_config()
    files = [f.absolute() for f in sorted(nbglob(as_path=True)) if _keep_file(f, '.notest')]
    files.sort(key=lambda f: -NB_SECONDS.get(f.name, 0))               # a stable sort: the rest keep their name order
    with working_directory(cfg.nbs_path):
        results = parallel(test_nb, files, skip_flags=cfg.tst_flags.split(), force_flags=[], n_workers=n_workers,
                           basepath=cfg.config_path, pause=0.01, do_print=False)
    passed, times = zip(*results)
    for f, t in sorted(zip(files, times), key=lambda o: -o[1]): print(f"{f.name}: {int(t)} secs")
    if all(passed): print("Success."); return 0
    sys.stderr.write("\nnbdev Tests Failed On The Following Notebooks:\n" + '=' * 50 + '\n\t'
                     + '\n\t'.join(f.name for p, f in zip(passed, files) if not p) + '\n')
    return 1


if __name__ == '__main__': sys.exit(main(*map(int, sys.argv[1:])))
