"`kdnb grid`: the smoke grid end to end through papermill, resume after a kill, concurrent runners, Ray, bad specs."
import json, os, signal, socket, subprocess, sys, time
from collections import Counter
from pathlib import Path
import pytest
from conftest import run_kdnb, run_main, KDNB, ROOT
from test_cli import one_line_error

SMOKE = ROOT/'grids'/'smoke.yaml'
TINY = """dataset: cifar10-subset
epochs: 1
max_items: 128
experiments:
  main:
    pairs: [ResNet-8 -> ResNet-14]
    methods: [KD, DIST]
"""  # 4 cells: teacher, student, KD, DIST

def events(out): return [json.loads(l) for l in (Path(out)/'events.jsonl').read_text().splitlines()]
def starts(out): return Counter(e['cell'] for e in events(out) if e['event'] == 'start')
def finished(out): return sorted(p.parent for p in (Path(out)/'cells').rglob('results.json') if 'evaluation' in json.loads(p.read_text()))

@pytest.fixture
def tiny_spec(tmp_path):
    f = tmp_path/'tiny.yaml'; f.write_text(TINY); return f

def test_smoke_grid_end_to_end(tmp_path):
    out = tmp_path/'smoke'
    r = run_kdnb('grid', 'run', SMOKE, '--out', out, '--workers', '2', check=True)
    assert '7 cells, 0 finished, 7 to run' in r.stdout and '7/7 cells finished' in r.stdout
    assert len(finished(out)) == 7
    for d in finished(out):
        assert (d/'experiment.ipynb').exists() and (d/'last.pt').exists()  # the executed notebook is kept beside its results
        res = json.loads((d/'results.json').read_text())
        assert res['history'] and res['versions']['torch'] and 'git_commit' in res['versions'] and res['cell'] in str(d)
        assert abs(res['evaluation']['top1'] - res['last']['top1']) < 1e-3
    nb = json.loads((out/'cells/cifar10-subset/distill/WRN-16-2_WRN-16-1/KD/s1/experiment.ipynb').read_text())
    assert any('injected-parameters' in c['metadata'].get('tags', []) for c in nb['cells'])
    # the table: every row, mean +- std over the two seeds, the delta over the student
    t = run_kdnb('grid', 'table', out, check=True).stdout
    for s in ['| teacher -> student | WRN-16-2 -> WRN-16-1 |', '| Teacher |', '| Student |', '| KD |', '| SRD |', ' ± ']: assert s in t
    assert 'pending' not in t and (out/'table.csv').exists()
    # finished cells are never run again
    r = run_kdnb('grid', 'run', SMOKE, '--out', out, check=True)
    assert '7 finished, 0 to run' in r.stdout and set(starts(out).values()) == {1}
    # a corrupt results file: reported, set aside, that cell (only) re-run
    victim = out/'cells/cifar10-subset/distill/WRN-16-2_WRN-16-1/SRD/s0'
    (victim/'results.json').write_text('{"last": {"top1": 0.1')
    before = {p: p.stat().st_mtime for p in (out/'cells').rglob('results.json') if victim not in p.parents}
    r = run_kdnb('grid', 'run', SMOKE, '--out', out, check=True)
    assert '6 finished, 1 to run' in r.stdout and 'corrupt' in r.stdout
    assert (victim/'results.json.corrupt').exists() and victim in finished(out)
    assert starts(out)[str(victim.relative_to(out/'cells'))] == 2 and sum(starts(out).values()) == 8
    assert before == {p: p.stat().st_mtime for p in before}

def test_dry_run_lists_cifar100_grid(tmp_path):
    r = run_main('grid', 'run', ROOT/'grids'/'cifar100.yaml', '--out', tmp_path/'g', '--dry-run', check=True)
    assert '65 cells (12 from scratch, 53 distillation)' in r.stdout
    assert not (tmp_path/'g').exists()  # a dry run writes nothing
    lines = r.stdout.splitlines()
    ids = [l.split('. ', 1)[1] for l in lines if l[:5].strip().rstrip('.').isdigit()]
    for pair in ['WRN-40-4_WRN-16-4', 'WRN-40-2_WRN-40-1', 'WRN-40-4_WRN-16-2', 'WRN-40-4_MobileNetV2', 'ResNet-18_MobileNetV2']:
        for m in ['KD', 'FitNet', 'AT', 'DML', 'DIST', 'SRD', 'SRDwithDIST']: assert f'CIFAR-100/distill/{pair}/{m}/s0' in ids
    assert ids.index('CIFAR-100/train/WRN-40-4/s0') < ids.index('CIFAR-100/distill/WRN-40-4_WRN-16-4/KD/s0')
    assert ids.index('CIFAR-100/train/ResNet-110/s0') < ids.index('CIFAR-100/distill/ResNet-110_ResNet-14/SRD/s0')
    assert 'SRDwithDIST(alpha=1.0, beta=10' in r.stdout and 'KD(alpha=0.9, T=4.0) WRN-40-4 -> WRN-16-4 [precomputed teacher logits]' in r.stdout
    assert 'lr 0.01' in r.stdout and '350 ep, bs 128, lr 0.1 (x0.1 at 150/250/320)' in r.stdout

def test_killed_runner_resumes_without_rerunning(tiny_spec, tmp_path):
    out = tmp_path/'g'
    p = subprocess.Popen([KDNB, 'grid', 'run', tiny_spec, '--out', out, '--workers', '1'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(finished(out) if (out/'cells').exists() else []) < 2: time.sleep(0.5)
    while time.time() < deadline and sum(starts(out).values()) < 3: time.sleep(0.2)  # killed while the third cell runs
    p.send_signal(signal.SIGKILL); p.wait()
    done_before = {str(d.relative_to(out/'cells')) for d in finished(out)}
    assert len(done_before) >= 2
    time.sleep(3)  # the worker dies with the runner and its kernel notices within a second
    from kdnb.grid import is_locked
    assert not any(is_locked(d.parent) for d in (out/'cells').rglob('.lock'))
    r = run_kdnb('grid', 'run', tiny_spec, '--out', out, '--workers', '1', check=True)
    assert '4/4 cells finished' in r.stdout and len(finished(out)) == 4
    assert all(starts(out)[c] == 1 for c in done_before)

def test_two_runners_share_a_grid(tiny_spec, tmp_path):
    out = tmp_path/'g'
    ps = [subprocess.Popen([KDNB, 'grid', 'run', tiny_spec, '--out', out, '--workers', '1'], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in ps]
    assert [p.returncode for p in ps] == [0, 0], outs
    assert len(finished(out)) == 4
    assert dict(starts(out)) == {c: 1 for c in starts(out)} and len(starts(out)) == 4, events(out)
    assert len({e['pid'] for e in events(out) if e['event'] == 'start'}) >= 1

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_ray_backend_on_local_cluster(tiny_spec, tmp_path):
    ray = str(Path(sys.executable).parent/'ray')
    port = _free_port()
    env = {**os.environ, 'RAY_USAGE_STATS_ENABLED': '0'}
    subprocess.run([ray, 'start', '--head', f'--port={port}', '--node-ip-address=127.0.0.1', '--num-cpus=2', '--include-dashboard=false',
                    '--object-store-memory=100000000', '--disable-usage-stats'], check=True, capture_output=True, env=env, timeout=180)
    try:
        r = run_kdnb('grid', 'run', tiny_spec, '--out', tmp_path/'g', '--backend', 'ray', '--address', f'127.0.0.1:{port}', check=True)
        assert 'Ray cluster' in r.stdout and '4/4 cells finished' in r.stdout
        assert len(finished(tmp_path/'g')) == 4
        assert len({e['pid'] for e in events(tmp_path/'g') if e['event'] == 'start'}) >= 1
    finally: subprocess.run([ray, 'stop', '--force'], capture_output=True, env=env, timeout=120)

BAD = {
    'experiments: [1, 2': ('not valid YAML',),
    'experiments:\n  main:\n    pairs: [WRN-40-4 -> WRN-99-1]\n    methods: [KD]\n': ("experiment 'main', pair 'WRN-40-4 -> WRN-99-1', field 'pairs': unknown model 'WRN-99-1'",),
    'experiments:\n  main:\n    pairs: [WRN-40-4 -> WRN-16-4]\n    methods: [KD, CRD]\n': ("experiment 'main', field 'methods': unknown method 'CRD'",),
    'dataset: mnist\nexperiments:\n  main:\n    pairs: [WRN-40-4 -> WRN-16-4]\n    methods: [KD]\n': ("top level, field 'dataset': unknown dataset 'mnist'",),
    'epochs: -3\nexperiments:\n  main:\n    models: [WRN-16-1]\n': ("top level, field 'epochs': must be an integer >= 1",),
    'experiments:\n  main:\n    pairs: [WRN-40-4 -> WRN-16-4]\n    methods: [KD]\n    hparams: {KD: {beta: 3}}\n': ("method 'KD', field 'hparams': method KD has no hyper-parameter 'beta'",),
}

@pytest.mark.parametrize('text', list(BAD))
def test_bad_spec_rejected_before_running(text, tmp_path):
    f = tmp_path/'bad.yaml'; f.write_text(text)
    one_line_error(run_main('grid', 'run', f, '--out', tmp_path/'g'), str(f), *BAD[text])
    assert not (tmp_path/'g').exists()

def test_missing_dataset_and_bad_dirs(tmp_path):
    one_line_error(run_main('grid', 'run', ROOT/'grids'/'cifar100.yaml', '--out', tmp_path/'g', '--data-root', tmp_path),
                   'cifar100', 'download')
    assert not (tmp_path/'g').exists()
    one_line_error(run_main('grid', 'run', ROOT/'grids'/'cifar100.yaml', '--out', tmp_path/'g'), '--data-root')
    one_line_error(run_main('grid', 'run', tmp_path/'nope.yaml', '--out', tmp_path/'g'), 'no such grid spec')
    one_line_error(run_main('grid', 'table', tmp_path), 'has no grid.yaml')
    one_line_error(run_main('grid', 'run', SMOKE, '--out', tmp_path/'g', '--backend', 'ray'), '--address')
