#!/usr/bin/env python
"""Render README.md from nbs/index.ipynb (nbdev's own `nbdev_readme` needs quarto, which is not installable here).

Markdown cells are copied; code cells become ```python blocks (cells marked `#| hide` are left out, other
`#|` directives are stripped); text outputs follow as plain blocks. `python .ci/readme.py` writes README.md;
`python .ci/readme.py --check` exits 1 if README.md is out of date.
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def render(nb_path: Path = ROOT/'nbs'/'index.ipynb') -> str:
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    parts = ['<!-- Generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file. -->']
    for cell in nb['cells']:
        src = ''.join(cell['source'])
        if cell['cell_type'] == 'markdown':
            parts.append(src.strip())
        elif cell['cell_type'] == 'code':
            lines = src.splitlines()
            directives = [l for l in lines if l.startswith('#|')]
            if any(d.split()[1:2] in (['hide'], ['exporti'], ['export']) for d in directives) or not src.strip(): continue
            parts.append('```python\n' + '\n'.join(l for l in lines if not l.startswith('#|')).strip() + '\n```')
            text = ''.join(''.join(o.get('text', '')) if o.get('output_type') == 'stream'
                           else ''.join(o.get('data', {}).get('text/plain', '')) for o in cell.get('outputs', []))
            if text.strip(): parts.append('```\n' + text.rstrip() + '\n```')
    return '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    want, readme = render(), ROOT/'README.md'
    if '--check' in sys.argv:
        ok = readme.exists() and readme.read_text(encoding='utf-8') == want
        if not ok: print("README.md is out of date with nbs/index.ipynb: run `python .ci/readme.py`", file=sys.stderr)
        sys.exit(0 if ok else 1)
    readme.write_text(want, encoding='utf-8')
    print(f"wrote {readme}")
