#!/usr/bin/env python
"""Drop saved ipywidgets state from executed notebooks, keeping their text fallbacks (progress bars are dropped).

`nbdev_clean` keeps the notebook-level `widgets` metadata, so a notebook executed in place would commit the
viewer's whole widget state (and an output that shows "model not found" in JupyterLab). `make outputs` runs
this after executing the lessons: `python .ci/strip_widgets.py nbs/*.ipynb`.
"""
import json, sys
from pathlib import Path

VIEW = 'application/vnd.jupyter.widget-view+json'
for name in sys.argv[1:]:
    p = Path(name)
    nb = json.loads(p.read_text(encoding='utf-8'))
    had = 'widgets' in nb.get('metadata', {}) or any(VIEW in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
    if not had: continue
    nb['metadata'].pop('widgets', None)
    for c in nb['cells']:
        # a progress bar's text fallback is its first frame ("0%|"): a finished run's bars are dropped, not frozen at 0
        c['outputs'] = [o for o in c.get('outputs', []) if not (VIEW in o.get('data', {}) and
                        '%|' in ''.join(o['data'].get('text/plain', '')))] if 'outputs' in c else c.get('outputs')
        if c.get('outputs') is None: c.pop('outputs', None)
        for o in c.get('outputs', []): o.get('data', {}).pop(VIEW, None)
    p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    print('stripped widget state from', p)
