"""`make gpu-check` on a CPU, as far as it goes: a Python with only what the GPU image has (PyTorch, torchvision, numpy,
pandas, matplotlib, scikit-learn, requests, rich, tqdm, pyyaml, pillow) plus the packages of .ci/gpu-packages.txt
imports kdnb, runs a one-batch distillation and executes a notebook through papermill, and the check's own script
reports on it. Both sets are taken from this environment's installed packages, linked, not downloaded."""
import importlib.metadata as md, os, re, subprocess, sys, venv
from pathlib import Path
import pytest
from packaging.requirements import Requirement
from conftest import ROOT

IMAGE = ['torch', 'torchvision', 'numpy', 'pandas', 'matplotlib', 'scikit-learn', 'requests', 'rich', 'tqdm', 'pyyaml', 'pillow']

def _key(name): return re.sub(r'[-_.]+', '-', name).lower()

def dependency_closure(roots) -> set:
    "The installed distributions `roots` need, themselves included (extras left out)."
    seen, todo = set(), [_key(r) for r in roots]
    while todo:
        n = todo.pop()
        if n in seen: continue
        try: d = md.distribution(n)
        except md.PackageNotFoundError: continue
        seen.add(n)
        todo += [_key(r.name) for r in map(Requirement, d.requires or []) if not r.marker or r.marker.evaluate({'extra': ''})]
    return seen

def link_distributions(names, dst:Path):
    "A folder that holds the installed distributions `names` (their top-level files and folders, linked), for `sys.path`."
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        d = md.distribution(n)
        for top in {f.parts[0] for f in d.files or [] if f.parts[0] not in ('..', '__pycache__', 'bin')}:
            src, link = Path(d.locate_file(top)), dst/top
            if src.exists() and not link.exists(): link.symlink_to(src)
    return dst

def gpu_packages() -> list[str]:
    return [p for l in (ROOT/'.ci'/'gpu-packages.txt').read_text().splitlines() if not l.startswith('#') for p in l.split()]

@pytest.fixture(scope='module')
def gpu_like_python(tmp_path_factory):
    "A fresh venv that sees the image's packages; the carried packages are in a separate folder, as the check installs them."
    tmp = tmp_path_factory.mktemp('gpu')
    venv.create(tmp/'venv', with_pip=False)
    py = tmp/'venv'/'bin'/'python'
    purelib = subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], capture_output=True, text=True).stdout.strip()
    image = link_distributions(dependency_closure(IMAGE), tmp/'image')
    Path(purelib, 'image.pth').write_text(f'{image}\n')
    carried = link_distributions([_key(p) for p in gpu_packages()], tmp/'site')
    return py, carried, tmp

def test_package_list_is_installed_here():
    missing = [p for p in gpu_packages() if _key(p) not in {_key(d.metadata['Name']) for d in md.distributions()}]
    assert not missing, f"{missing} are in .ci/gpu-packages.txt but not installed, so `make gpu-wheels` cannot pin them"

def test_image_plus_carried_packages_run_kdnb(gpu_like_python):
    py, carried, tmp = gpu_like_python
    env = {**os.environ, 'PYTHONPATH': f'{carried}:{ROOT}', 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    # the check's own script, its environment step only (the install step needs the GPU machine's wheels)
    r = subprocess.run(['bash', ROOT/'.ci'/'gpu-check', tmp/'report'], env={**env, 'PYTHON': str(py), 'GPU_CHECK_STEPS': 'env'},
                       capture_output=True, text=True, timeout=300)
    report = (tmp/'report'/'gpu-check.md').read_text()
    assert r.returncode == 0 and '## Environment: passed' in report, report + r.stderr
    assert "'fastai'" in report and 'GPUs: none' in report
    code = """
import sys, papermill as pm, nbformat
from kdnb.cli import main
assert main(['distill', '--teacher', 'ResNet-8', '--student', 'ResNet-8', '--epochs', '1', '--max-items', '16', '--bs', '16',
             '--out', sys.argv[1] + '/run', '--no-progress', '--device', 'cpu']) == 0
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('import kdnb.train; print(6 * 7)')])
nbformat.write(nb, sys.argv[1] + '/in.ipynb')
out = pm.execute_notebook(sys.argv[1] + '/in.ipynb', sys.argv[1] + '/out.ipynb', kernel_name='python3', progress_bar=False)
assert out.cells[0].outputs[0]['text'].strip() == '42'
"""
    r = subprocess.run([py, '-c', code, tmp], env=env, capture_output=True, text=True, timeout=300, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp/'run'/'results.json').exists()
