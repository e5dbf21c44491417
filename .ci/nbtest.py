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

# seconds per notebook under `make test` (the CI run of 2026-12-04 on 2 cores; 16 after its live run went to chapter 14's lesson
# settings); notebooks not listed go last, in name order. 14 trains the stage 1 that 16 reuses, so 14 goes first.
NB_SECONDS = {'12_metrics.ipynb': 131, '14_strategies.ipynb': 87, '10_cyclegan.ipynb': 84, '09_pix2pix.ipynb': 78,
              '13_experiments.ipynb': 71, '07_unet.ipynb': 66, '08_gan.ipynb': 65, '16_progressive.ipynb': 55,
              '11_translate.ipynb': 29, '08_baselines.ipynb': 22, '01_phantom.ipynb': 18, '90_cli.ipynb': 12, '05_data.ipynb': 9,
              '15_table1.ipynb': 6}


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
