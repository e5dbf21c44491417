"""Remedies for chapter 07's late tumour core and enhancing tumour: one-epoch U-Net runs of `seg_curve.py` with a
change each, on the seeds whose TC/ET had not passed the threshold floor within three epochs (2, 3 and 4).

Every remedy but one is a `SegConfig` setting, passed through to `seg_curve.py` (`--set KEY=VALUE`); the Dice
weights per region are not a brainkit setting, so `--dice-weights` patches the loss for this process only:

    .venv/bin/python bench/seg_remedies.py --name "bce_weight 0" -- --epochs 2 --seeds 2 3 --set bce_weight=0
    .venv/bin/python bench/seg_remedies.py --name "batch 8" -- --epochs 1 --seeds 2 3 4 --set batch_size=8
    .venv/bin/python bench/seg_remedies.py --name "lr 1e-2 with tumour_share 0.5" -- --epochs 1 --seeds 2 3 4 \
        --set lr=0.01 tumour_share=0.5
    .venv/bin/python bench/seg_remedies.py --name "Dice weights 1 2 2" --dice-weights 1 2 2 -- --epochs 1 --seeds 2 3 4
    .venv/bin/python bench/seg_remedies.py --name "tumour_share 0.5" -- --epochs 3 --seeds 2 3 4 --set tumour_share=0.5

(every run also sets `tumour_share=0`, the plain shuffle, unless it sets the share itself). The recorded
`tumour_share 0.5` entry predates the sampler's fresh augmentation of repeated slices (see the JSON's note). Each run is
recorded under its name in `results/seg_remedies.json` (the curves `seg_curve.py` wrote, and the command).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seg_curve  # noqa: E402  (sets the thread environment before torch loads)
from _common import RESULTS_DIR  # noqa: E402
from curves import write_json  # noqa: E402

import torch.nn.functional as F  # noqa: E402
import brainkit.segment as S  # noqa: E402
from brainkit.losses import soft_dice_loss  # noqa: E402


def weighted_dice_bce(weights):
    "brainkit.losses.dice_bce_loss with its soft Dice weighted per region (a weighted mean of each channel's Dice loss)."
    def loss(logits, target, bce_weight=1.0, smooth=1.0):
        dice = sum(w * soft_dice_loss(logits[:, c:c + 1], target[:, c:c + 1], smooth) for c, w in enumerate(weights))
        return dice / sum(weights) + bce_weight * F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--name', required=True)
    ap.add_argument('--dice-weights', nargs=3, type=float, default=None, metavar=('WT', 'TC', 'ET'))
    ap.add_argument('--out', type=Path, default=RESULTS_DIR/'seg_remedies.json')
    ap.add_argument('curve_args', nargs=argparse.REMAINDER, help='after --: the arguments of seg_curve.py')
    a = ap.parse_args()
    rest = [x for x in a.curve_args if x != '--']
    if not any(x.startswith('tumour_share=') for x in rest):                   # the plain shuffle, unless it is the remedy
        if '--set' in rest: rest.insert(rest.index('--set') + 1, 'tumour_share=0')
        else: rest += ['--set', 'tumour_share=0']
    if a.dice_weights: S.dice_bce_loss = weighted_dice_bce(a.dice_weights)       # _seg_step looks it up at call time
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)/'curve.json'
        seg_curve.main([*rest, '--out', str(out), '--runs', str(Path(tmp)/'runs')])
        curve = json.loads(out.read_text())
    doc = json.loads(a.out.read_text()) if a.out.exists() else {'benchmark': 'seg_remedies', 'runs': {}}
    doc['runs'][a.name] = {'argv': sys.argv[1:], 'curves': curve['curves'], 'checks': curve['checks'],
                           'machine': curve['machine'], 'timestamp_utc': curve['timestamp_utc']}
    write_json(a.out, doc)


if __name__ == '__main__':
    main()
