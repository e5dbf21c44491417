"""The library is a layer cake (README, "The modules"): a module imports only from layers below it, or from modules
before it in its own layer, never from above, and never another module's `_private` names. (One dependency runs
upwards by design and is not an import: `brainkit.gan.translators()` loads the models that declare themselves as
entry points, as plugins.)"""
import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent/'brainkit'
LAYERS = [['io', 'phantom'], ['viz', 'viewer'], ['preprocess'], ['data'], ['networks', 'losses', 'metrics'], ['train'],
          ['gan'], ['segment', 'pix2pix', 'cyclegan'], ['baselines', 'translate'], ['strategies', 'progressive'],
          ['experiments', 'cli']]
ORDER = [m for layer in LAYERS for m in layer]


def imports(path:Path) -> list[tuple[str, str, int]]:
    "(module, imported name, line) for every import of a brainkit module in `path`, anywhere in the file."
    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and (n.level or (n.module or '').startswith('brainkit')):
            mod = (n.module or '').removeprefix('brainkit').lstrip('.')
            if mod: out += [(mod, a.name, n.lineno) for a in n.names]
            else: out += [('__init__', a.name, n.lineno) if a.name.startswith('__') else (a.name, '*', n.lineno) for a in n.names]   # `from . import io`
        elif isinstance(n, ast.Import):
            out += [(a.name.removeprefix('brainkit.'), '*', n.lineno) for a in n.names if a.name.startswith('brainkit.')]
    return out


def modules():
    return sorted(p for p in LIB.glob('*.py') if p.stem not in ('__init__', '_modidx'))


def test_every_module_has_a_layer():
    assert sorted(p.stem for p in modules()) == sorted(ORDER), "add the new module to LAYERS here and to the README's map"


def test_no_upward_imports():
    bad = []
    for p in modules():
        for mod, name, line in imports(p):
            if mod == '__init__': continue                              # the package's __version__
            if mod not in ORDER or ORDER.index(mod) >= ORDER.index(p.stem): bad.append(f"{p.name}:{line} imports {mod}.{name}")
    assert not bad, "imports from the same or a higher layer:\n" + '\n'.join(bad)


def test_no_private_names_across_modules():
    bad = [f"{p.name}:{line} imports {mod}.{name}" for p in modules() for mod, name, line in imports(p)
           if name.startswith('_') and name != '__version__']
    assert not bad, "private names imported from other modules:\n" + '\n'.join(bad)
