"""`make gpu-check` on a CPU, as far as it goes: a Python with only what the GPU image has (PyTorch, torchvision, numpy,
pandas, matplotlib, scikit-learn, requests, rich, tqdm, pyyaml, pillow) plus the packages of .ci/gpu-packages.txt
imports kdnb, runs a one-batch distillation and executes a notebook through papermill, and the check's own script
reports on it. Both sets are taken from this environment's installed packages, linked, not downloaded."""
import importlib.metadata as md, os, re, subprocess
from pathlib import Path
import pytest
from conftest import ROOT, dependency_closure, link_distributions, dist_key, isolated_python

IMAGE = ['torch', 'torchvision', 'numpy', 'pandas', 'matplotlib', 'scikit-learn', 'requests', 'rich', 'tqdm', 'pyyaml', 'pillow']

def gpu_packages() -> list[str]:
    return [p for l in (ROOT/'.ci'/'gpu-packages.txt').read_text().splitlines() if not l.startswith('#') for p in l.split()]

@pytest.fixture(scope='module')
def gpu_like_python(tmp_path_factory):
    "A fresh venv that sees the image's packages; the carried packages are in a separate folder, as the check installs them."
    tmp = tmp_path_factory.mktemp('gpu')
    py = isolated_python(tmp/'venv', link_distributions(dependency_closure(IMAGE), tmp/'image'))
    carried = link_distributions([dist_key(p) for p in gpu_packages()], tmp/'site')
    return py, carried, tmp

def test_package_list_is_installed_here():
    missing = [p for p in gpu_packages() if dist_key(p) not in {dist_key(d.metadata['Name']) for d in md.distributions()}]
    assert not missing, f"{missing} are in .ci/gpu-packages.txt but not installed, so `make gpu-wheels` cannot pin them"

def test_image_plus_carried_packages_run_kdnb(gpu_like_python):
    py, carried, tmp = gpu_like_python
    env = {**os.environ, 'PYTHONPATH': f'{carried}:{ROOT}', 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    # the check's own script, its environment and test steps (the install step needs the GPU machine's wheels; without CUDA
    # the GPU-marked tests skip, but their parallel workers start from the carried packages)
    r = subprocess.run(['bash', ROOT/'.ci'/'gpu-check', tmp/'report'], env={**env, 'PYTHON': str(py), 'GPU_CHECK_STEPS': 'env,tests', 'GPU_CHECK_TEST_WORKERS': '2'},
                       capture_output=True, text=True, timeout=600)
    report = (tmp/'report'/'gpu-check.md').read_text()
    assert r.returncode == 0 and '## Environment: passed' in report and '## GPU-marked tests: passed' in report, report + r.stderr
    assert re.search(r'\d+ skipped', report.split('## GPU-marked tests')[1]), report
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
    # the GPU-marked tests run `kdnb` commands where kdnb is importable but not installed as a command
    r = subprocess.run([py, '-c', "from conftest import run_kdnb; print(run_kdnb('datasets', check=True).stdout)"],
                       env={**env, 'PYTHONPATH': f"{carried}:{ROOT}:{ROOT/'tests'}"}, capture_output=True, text=True, timeout=300, cwd=tmp)
    assert r.returncode == 0 and 'cifar10-subset' in r.stdout, r.stdout + r.stderr

def test_budget_leaves_steps_for_another_call(tmp_path):
    "A check out of time skips what no longer fits, says so in its report and on exit, and names the steps to run in a second call, in the order asked for."
    r = subprocess.run(['bash', ROOT/'.ci'/'gpu-check', tmp_path], env={**os.environ, 'GPU_CHECK_STEPS': 'dispatch,env', 'GPU_CHECK_BUDGET': '20'},
                       capture_output=True, text=True, timeout=60)
    report = (tmp_path/'gpu-check.md').read_text()
    assert r.returncode == 3, (r.returncode, report)
    assert '## Environment: skipped' in report and '## kdnb bench --dispatch' in report, report
    assert report.index('## kdnb bench --dispatch') < report.index('## Environment'), report  # the order of GPU_CHECK_STEPS, not the script's
    assert report.rstrip().endswith('GPU_CHECK_STEPS=install,dispatch,env bash .ci/gpu-check DIR'), report

def test_step_needing_more_than_is_left_is_not_started(tmp_path):
    "A step is not started with less than a quarter of its time limit left (the GPU tests: 420 s), even when 30 s or more remain."
    r = subprocess.run(['bash', ROOT/'.ci'/'gpu-check', tmp_path], env={**os.environ, 'GPU_CHECK_STEPS': 'tests', 'GPU_CHECK_BUDGET': '60'},
                       capture_output=True, text=True, timeout=60)
    report = (tmp_path/'gpu-check.md').read_text()
    assert r.returncode == 3 and '## GPU-marked tests: skipped' in report and not (tmp_path/'tests.log').exists(), (r.returncode, report)

def test_unknown_step_is_refused_before_anything_runs(tmp_path):
    "A misspelt step in GPU_CHECK_STEPS stops the check at once, naming it and the steps there are."
    r = subprocess.run(['bash', ROOT/'.ci'/'gpu-check', tmp_path], env={**os.environ, 'GPU_CHECK_STEPS': 'env,bnech'},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown step 'bnech'" in r.stderr and 'overlap' in r.stderr, (r.returncode, r.stderr)
    assert '## Environment' not in (tmp_path/'gpu-check.md').read_text()
