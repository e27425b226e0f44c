"The notebooks are the source of truth: exporting them must reproduce kdnb/ exactly."
import filecmp, shutil, subprocess, sys
from pathlib import Path
from conftest import ROOT

def test_nbdev_export_leaves_no_diff(tmp_path):
    for p in ('nbs', 'kdnb', 'pyproject.toml', 'README.md'):
        src = ROOT/p
        (shutil.copytree(src, tmp_path/p, ignore=shutil.ignore_patterns('__pycache__', 'assets')) if src.is_dir() else shutil.copy(src, tmp_path/p))
    exe = Path(sys.executable).parent/'nbdev-export'
    subprocess.run([str(exe)], cwd=tmp_path, check=True, capture_output=True)
    cmp = filecmp.dircmp(ROOT/'kdnb', tmp_path/'kdnb', ignore=['__pycache__', 'assets'])
    def diffs(c): return c.diff_files + c.left_only + c.right_only + [d for s in c.subdirs.values() for d in diffs(s)]
    assert not diffs(cmp), f"nbdev-export changes {diffs(cmp)}: edit the notebooks, not kdnb/, then run nbdev-export"

def test_no_cell_mixes_imports_and_code():
    "For a notebook that exports, nbdev runs every cell with an import while processing docs (for `show_doc`): a test cell that also imports would run there too."
    import ast, json
    mixed = []
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        if not any(''.join(c['source']).startswith('#| export') for c in cells): continue  # tutorials: nbdev executes nothing
        for i, cell in enumerate(cells):
            if cell['cell_type'] != 'code': continue
            src = ''.join(cell['source'])
            if src.startswith('#| export') or '#| eval: false' in src: continue
            try: body = ast.parse(src).body
            except SyntaxError: continue  # magics: nbdev skips them too
            kinds = {type(n) for n in body}
            if kinds & {ast.Import, ast.ImportFrom} and kinds & {ast.Expr, ast.Assign}: mixed.append(f"{nb.name} cell {i}")
    assert not mixed, f"move these imports to the notebook's import cell: {mixed}"

def test_readme_is_the_index_notebook():
    "README.md and nbs/index.ipynb (the docs site's home page) say the same; nbdev's README renderer needs Quarto, so we keep them in step by hand."
    import json
    cells = [''.join(c['source']) for c in json.loads((ROOT/'nbs'/'index.ipynb').read_text())['cells']]
    assert '\n\n'.join(cells).strip() == (ROOT/'README.md').read_text().strip(), "edit README.md and nbs/index.ipynb together"

def test_notebooks_import_only_earlier_notebooks():
    "Reading order is import order: no notebook imports a module that a later notebook defines."
    import ast, json, re
    nbs = sorted((ROOT/'nbs').glob('[0-9]*.ipynb'))
    cells = {nb: [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code'] for nb in nbs}
    defines = {m: nb for nb, cs in cells.items() for c in cs for m in re.findall(r'^#\| default_exp (\S+)', c, re.M)}
    def imported(cell):  # import statements only (a module named in a string is not an import)
        try: tree = ast.parse(cell)
        except SyntaxError: return []
        return [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module] + \
               [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    late = [f"{nb.name} imports {m} ({defines[m.removeprefix('kdnb.')].name})" for nb, cs in cells.items() for c in cs for m in imported(c)
            if m.startswith('kdnb.') and m.removeprefix('kdnb.') in defines and defines[m.removeprefix('kdnb.')].name > nb.name]
    assert not late, late

def test_importing_any_entry_module_shows_no_fastai_deprecation():
    "kdnb.core's filter for fastai's torch.jit.script deprecation is in place before fastai loads, whichever module a user imports first."
    mods = ['kdnb.data', 'kdnb.fast', 'kdnb.distributed', 'kdnb.train', 'kdnb.distill', 'kdnb.fused', 'kdnb.bench', 'kdnb.grid']
    procs = {m: subprocess.Popen([sys.executable, '-W', 'default', '-c', f'import {m}'], stderr=subprocess.PIPE, text=True) for m in mods}
    warned = {m: err for m, p in procs.items() if 'FutureWarning' in (err := p.communicate(timeout=300)[1])}
    assert not warned, warned
