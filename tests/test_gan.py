"""The translation core (brainkit.gan): the model contract, the registry that the command line and translation read,
the shared config's checks, the harness, and how a checkpoint describes its generators."""
from dataclasses import dataclass
import json

import pytest
import torch
from torch import nn

from brainkit.data import PairedSlices, split_dataset, fit_normalizers
from brainkit.gan import (GANConfig, Prepared, TranslationModel, direction, loss_values, register_translator,
                          train_translation, translate_batch, translators)
from brainkit.networks import GENERATORS
from brainkit.train import CheckpointError, Dist, load_checkpoint
from brainkit.translate import load_translator
from brainkit.cyclegan import CycleGAN, CycleGANConfig
from brainkit.pix2pix import Pix2Pix, Pix2PixConfig

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def test_the_kits_models_are_registered_through_entry_points():
    reg = translators()
    assert reg['pix2pix'] is Pix2Pix and reg['cyclegan'] is CycleGAN
    for cls in (Pix2Pix, CycleGAN):
        assert issubclass(cls.Config, GANConfig)
        assert isinstance(cls(cls.Config(ngf=2, ndf=2), 'cpu', Dist()), TranslationModel)


def test_a_class_that_breaks_the_contract_is_refused():
    with pytest.raises(TypeError, match='has no Config, loss_names'): register_translator(type('Half', (), {'name': 'half'}))
    class NotGAN: name, Config, loss_names, visual_names, score_name = 'x', dict, (), (), 'val'; step = prepare = None
    with pytest.raises(TypeError, match='GANConfig subclass'): register_translator(NotGAN)


@pytest.mark.parametrize('cls', [Pix2PixConfig, CycleGANConfig, GANConfig])
def test_every_generator_size_rule_comes_from_the_registry(cls):
    for name, spec in GENERATORS.items():
        ok, bad = 4 * spec.multiple, 4 * spec.multiple + spec.multiple // 2
        cls(netG=name, size=ok)                                      # a size the generator takes: accepted
        with pytest.raises(ValueError, match=f'size {bad} does not suit {name}: use a multiple of {spec.multiple}'):
            cls(netG=name, size=bad)
    with pytest.raises(ValueError, match='size 96 does not suit unet_64'): cls(netG='unet_64', size=96)   # passed before


def test_every_size_a_config_accepts_runs_through_its_generator():
    from brainkit.networks import generator
    for name, spec in GENERATORS.items():
        G = generator(name, 1, 1, ngf=1, norm='none')
        n = spec.min_size                                           # the smallest size the config accepts
        assert GANConfig(netG=name, size=n).size == n
        assert G(torch.zeros(1, 1, n, n)).shape == (1, 1, n, n), name
        with pytest.raises(ValueError, match='too small|does not suit'): GANConfig(netG=name, size=n // 2)


def test_loss_values_refuse_a_missing_loss():
    assert loss_values({'a': torch.tensor(1.5)}, ['a']) == {'a': 1.5}
    with pytest.raises(KeyError, match="no \\['b'\\]"): loss_values({'a': torch.tensor(1.)}, ['a', 'b'])


@dataclass
class L1Config(GANConfig):
    size: int = 32
    epochs: int = 1
    epochs_decay: int = 0
    sample_every: int = 0
    lr: float = 1e-2


class L1Map:
    "A model that follows the contract with one class: a 1x1 convolution t1 -> t2 trained with L1."
    name, Config, loss_names, visual_names, score_name = 'l1map', L1Config, ('L1',), ('fake_B',), 'val'
    def __init__(self, cfg, device, dist):
        self.G = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Tanh()).to(device)
        self.opt = torch.optim.Adam(self.G.parameters(), lr=cfg.lr)
        self.nets, self.optims, self.extras, self.visuals = {'G': self.G}, {'G': self.opt}, {}, {}
    def step(self, batch):
        fake = self.G(batch['source']); l = {'L1': (fake - batch['target']).abs().mean()}
        self.opt.zero_grad(); l['L1'].backward(); self.opt.step(); self.visuals = {'fake_B': fake.detach()}
        return loss_values(l, self.loss_names)
    @classmethod
    def prepare(cls, cfg, dist, cache, progress):
        _, (train, _, _), parts = split_dataset(None, 'auto', cfg.split, cfg.subject_seed)
        norms = fit_normalizers(cfg.normalization, ['t1', 't2'], train)
        ds = PairedSlices(train, ['t1'], 't2', cfg.slicing(norms), cache=cache, progress=False)
        return Prepared(ds, {'directions': {'AtoB': direction('G', ['t1'], 't2', norms)}, 'plane': cfg.plane,
                             'size': cfg.size, 'spacing': None, 'split': parts}, None, {'train_slices': len(ds)})


def test_a_new_model_is_one_class_and_translate_needs_nothing_else(tmp_path):
    register_translator(L1Map)
    m = train_translation('l1map', {'batch_size': 32}, tmp_path/'run', progress=False)
    assert m['kind'] == 'l1map' and m['epochs'] == 1 and m['val'] == {} and m['train_slices'] > 0
    ck = load_checkpoint(tmp_path/'run', 'l1map')
    assert ck['meta']['directions']['AtoB']['sources'] == ['t1']
    # load_translator rebuilds generators from their specs: a hand-made network has none, and it says so
    with pytest.raises(CheckpointError, match='not built by brainkit.networks.generator'): load_translator(tmp_path/'run')


def test_translate_batch_is_independent_of_the_batch_size():
    from brainkit.networks import generator
    G = generator('resnet_6blocks', 2, 1, ngf=4).train()
    x = torch.rand(5, 2, 16, 16) * 2 - 1
    torch.testing.assert_close(translate_batch(G, x, 2), translate_batch(G, x, 5), atol=1e-5, rtol=0)
    assert G.training


def test_the_checkpoint_describes_every_direction_the_same_way(tmp_path):
    from brainkit.cyclegan import train_cyclegan
    from brainkit.pix2pix import train_pix2pix
    tiny = dict(epochs=1, epochs_decay=0, ngf=2, ndf=2, size=32, sample_every=0, device='cpu', min_brain=0.6, batch_size=16)
    train_pix2pix({**tiny, 'sources': ['t1', 'flair']}, tmp_path/'p', progress=False)
    train_cyclegan({**tiny, 'spacing': 4.8}, tmp_path/'c', progress=False)
    p, c = (load_checkpoint(tmp_path/x)['meta']['directions'] for x in 'pc')
    assert list(p) == ['AtoB'] and list(c) == ['AtoB', 'BtoA']
    for d in (*p.values(), *c.values()): assert set(d) == {'net', 'sources', 'target', 'normalizers', 'target_normalizer'} and set(d['normalizers']) == set(d['sources'])
    assert (p['AtoB']['net'], p['AtoB']['sources'], p['AtoB']['target']) == ('G', ['t1', 'flair'], 't2')
    assert (c['BtoA']['net'], c['BtoA']['sources'], c['BtoA']['target']) == ('G_B', ['t1'], 't1')
    for x, dirs in (('p', p), ('c', c)):
        for name in dirs:
            G, info = load_translator(tmp_path/x, name, device='cpu')
            assert info['sources'] == dirs[name]['sources'] and info['model'] == {'p': 'pix2pix', 'c': 'cyclegan'}[x]


def test_names_are_unique_and_unknown_names_are_clear_errors():
    from brainkit.gan import translator
    Impostor = type('Pix2Pix', (L1Map,), {'name': 'pix2pix'})          # another class under a taken name
    with pytest.raises(ValueError, match="named 'pix2pix' is registered already"): register_translator(Impostor)
    assert translators()['pix2pix'] is Pix2Pix
    with pytest.raises(KeyError, match="no translation model 'provogan' is registered .*pix2pix"): translator('provogan')


def test_the_kits_models_are_found_without_an_installed_entry_point(monkeypatch):
    "A checkout on PYTHONPATH (not pip-installed) has no entry points: the registry reads its settings.ini."
    import importlib.metadata, brainkit.gan as G
    monkeypatch.setattr(importlib.metadata, 'entry_points', lambda **kw: [])
    monkeypatch.setattr(G, '_TRANSLATORS', {})
    assert {'pix2pix', 'cyclegan'} <= set(G.translators())


def test_a_checkpoint_from_a_newer_format_is_refused(tmp_path):
    from brainkit.train import FORMAT, save_checkpoint
    save_checkpoint(tmp_path/'new.pt', {'format': FORMAT + 1, 'brainkit': '9.9', 'kind': 'pix2pix', 'nets': {}, 'meta': {}})
    with pytest.raises(CheckpointError, match='(?s)does not know.*upgrade brainkit'): load_checkpoint(tmp_path/'new.pt')


def test_configs_take_keywords_only():
    from brainkit.segment import SegConfig
    for cls in (Pix2PixConfig, CycleGANConfig, SegConfig):
        with pytest.raises(TypeError): cls('/data')                      # a folder given positionally would land in `epochs`
