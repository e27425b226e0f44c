"`pip install kdnb`, not editable: the built wheel alone runs a grid from an empty folder (the experiment notebook ships in the package)."
import os, shutil, subprocess, sys
from conftest import ROOT, dependency_closure, link_distributions, isolated_python, two_cell_grid


def test_wheel_runs_a_grid_from_an_empty_folder(tmp_path):
    src = tmp_path/'src'  # a copy, so that building leaves nothing in the repository (the notebook link becomes a file, as in a wheel)
    src.mkdir()
    for f in ('pyproject.toml', 'README.md'): shutil.copy(ROOT/f, src/f)
    shutil.copytree(ROOT/'kdnb', src/'kdnb', ignore=shutil.ignore_patterns('__pycache__'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', tmp_path/'wheel', src], check=True,
                   capture_output=True)
    site = tmp_path/'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', site, *(tmp_path/'wheel').glob('kdnb-*.whl')],
                   check=True, capture_output=True)
    deps = dependency_closure(['kdnb']) | dependency_closure(['ipykernel'])  # what `pip install kdnb` brings, and a kernel
    py = isolated_python(tmp_path/'venv', site, link_distributions(deps - {'kdnb'}, tmp_path/'deps'))
    work = tmp_path/'empty'; work.mkdir(); (work/'tiny.yaml').write_text(two_cell_grid())
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'} | {'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    where = subprocess.run([py, '-c', 'import kdnb.grid as g; print(g.__file__); print(g.experiment_notebook())'], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(site)) for p in where), where  # the installed copy, not the repository's
    r = subprocess.run([py, '-c', 'import sys; from kdnb.cli import main; sys.exit(main(sys.argv[1:]))', 'grid', 'run', 'tiny.yaml',
                        '--out', 'g', '--no-progress', '--device', 'cpu'], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(list((work/'g'/'cells').rglob('results.json'))) == 2  # ResNet-8 from scratch (teacher and student alone), and KD
