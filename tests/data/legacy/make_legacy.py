# How the checkpoints in this folder were made: with brainkit at commit 8a7bfb5 (checkpoint format 1, before the
# translation core of nbs/08_gan_core.ipynb), on the bundled samples. They are tiny (ngf = ndf = 2, one epoch) and stand
# for every checkpoint users trained before that change: tests/test_legacy.py checks that they still load and translate
# to what that version produced (expected.json). Rerunning this script needs a checkout of that commit:
#   git worktree add /tmp/bk-8a7bfb5 8a7bfb5 && cd /tmp/bk-8a7bfb5 && make venv && .venv/bin/python THIS_FILE
# It read the samples of that commit (phantom version 1: 8 BraTS-like subjects). The one BraTS-like subject the outputs
# were computed from, BraTS2021_90003, is kept byte-identical in inputs/ (data_samples/ has since been regenerated);
# HCP subject 000001 is unchanged in data_samples/ (tests/test_legacy.py checks its sha256).
import os
import json, subprocess, sys, shutil
from pathlib import Path
import numpy as np
EXE = os.path.join(os.path.dirname(os.sys.executable), 'brainkit')
TINY = ['--epochs', '1', '--epochs-decay', '0', '--ngf', '2', '--ndf', '2', '--batch-size', '8', '--sample-every', '0', '--device', 'cpu', '--min-brain', '0.6']
out = Path(os.environ.get('OUT', 'legacy_out')); shutil.rmtree(out, ignore_errors=True)
def run(*a): r = subprocess.run([EXE, '-q', *a], capture_output=True, text=True); print(r.stdout, r.stderr[-2000:]); assert r.returncode == 0
run('train', 'pix2pix', '--out', str(out/'pix2pix'), *TINY, '--size', '32')
run('train', 'pix2pix', '--out', str(out/'pix2pix_multi'), *TINY, '--size', '32', '--sources', 't1', 'flair')
run('train', 'cyclegan', '--out', str(out/'cyclegan'), *TINY, '--size', '32', '--spacing', '4.8')
run('train', 'cyclegan', '--out', str(out/'cyclegan_t2_nyul'), *TINY, '--size', '32', '--spacing', '4.8', '--b-modality', 't2',
    '--normalization', 'nyul')   # two domains with different modalities and fitted normalizers: A and B cannot be confused
run('segment', 'train', '--out', str(out/'segment'), '--epochs', '1', '--epochs-decay', '0', '--base', '2', '--size', '32', '--device', 'cpu', '--batch-size', '8')
from brainkit.translate import load_translator, translate_volume
from brainkit.io import open_dataset, samples_dir
s = open_dataset(samples_dir('brats'))['BraTS2021_90003']
h = open_dataset(samples_dir('hcp'))[0]
res = {}
G, info = load_translator(out/'pix2pix_multi', 'AtoB', 'cpu')
res['pix2pix_multi_AtoB'] = {'info': {k: info[k] for k in ('sources', 'target', 'plane', 'size', 'spacing', 'normalizers', 'epoch')}}
for name, d, subj in (('pix2pix', 'AtoB', s), ('cyclegan', 'AtoB', h), ('cyclegan', 'BtoA', s),
                      ('cyclegan_t2_nyul', 'AtoB', h), ('cyclegan_t2_nyul', 'BtoA', s)):
    G, info = load_translator(out/name, d, 'cpu')
    y = translate_volume(G, info, subj).data
    res[f'{name}_{d}'] = {'info': {k: info[k] for k in ('sources', 'target', 'plane', 'size', 'spacing', 'normalizers', 'epoch')},
                          'subject': subj.id, 'mean': float(y.mean()), 'std': float(y.std()), 'sum_abs': float(np.abs(y).sum())}
from brainkit.segment import load_segmenter, segment_subject
m, meta = load_segmenter(out/'segment', 'cpu')
lab = segment_subject(m, meta, s).data
res['segment'] = {'subject': s.id, 'counts': {int(k): int(v) for k, v in zip(*np.unique(lab, return_counts=True))}}
json.dump(res, open(out/'expected.json', 'w'), indent=1)
print(json.dumps(res)[:2000])
