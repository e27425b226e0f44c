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
    t = run_main('grid', 'table', out, check=True).stdout
    for s in ['| teacher -> student | WRN-16-2 -> WRN-16-1 |', '| Teacher |', '| Student |', '| KD |', '| SRD |', ' ± ']: assert s in t
    assert 'pending' not in t and (out/'table.csv').exists()
    # finished cells are never run again
    r = run_main('grid', 'run', SMOKE, '--out', out, check=True)
    assert '7 finished, 0 to run' in r.stdout and set(starts(out).values()) == {1}
    # a corrupt results file: reported, set aside, that cell (only) re-run
    victim = out/'cells/cifar10-subset/distill/WRN-16-2_WRN-16-1/SRD/s0'
    (victim/'results.json').write_text('{"last": {"top1": 0.1')
    before = {p: p.stat().st_mtime for p in (out/'cells').rglob('results.json') if victim not in p.parents}
    r = run_main('grid', 'run', SMOKE, '--out', out, check=True)
    assert '6 finished, 1 to run' in r.stdout and 'corrupt' in r.stdout
    assert (victim/'results.json.corrupt').exists() and victim in finished(out)
    assert starts(out)[str(victim.relative_to(out/'cells'))] == 2 and sum(starts(out).values()) == 8
    assert before == {p: p.stat().st_mtime for p in before}

def dry_run(spec, out):
    "The dry run's output and its cells as {id: (description, after)}."
    r = run_main('grid', 'run', ROOT/'grids'/spec, '--out', out, '--dry-run', check=True)
    assert not out.exists()  # a dry run writes nothing
    lines, cells = r.stdout.splitlines(), {}
    for i, l in enumerate(lines):
        if l[:5].strip().rstrip('.').isdigit():
            after = lines[i + 2].strip().removeprefix('after ') if i + 2 < len(lines) and lines[i + 2].strip().startswith('after ') else ''
            cells[l.split('. ', 1)[1]] = (lines[i + 1].strip(), after)
    return r.stdout, cells

def test_dry_run_lists_cifar100_grid(tmp_path):
    out, cells = dry_run('cifar100.yaml', tmp_path/'g')
    assert '83 cells (18 from scratch, 65 distillation)' in out
    ids = list(cells)
    for pair in ['WRN-40-4_WRN-16-4', 'WRN-40-2_WRN-40-1', 'WRN-40-4_WRN-16-2', 'WRN-40-4_MobileNetV2', 'ResNet-18_MobileNetV2']:
        for m in ['KD', 'FitNet', 'AT', 'DML', 'DIST', 'SRD', 'SRDwithDIST']: assert f'CIFAR-100/distill/{pair}/{m}/s0' in ids
    assert ids.index('CIFAR-100/train/WRN-40-4/s0') < ids.index('CIFAR-100/distill/WRN-40-4_WRN-16-4/KD/s0')
    assert ids.index('CIFAR-100/train/ResNet-110/s0') < ids.index('CIFAR-100/distill/ResNet-110_ResNet-14/SRD/s0')
    assert 'KD(alpha=0.9, T=4.0) WRN-40-4 -> WRN-16-4 [precomputed teacher logits]' in out
    assert 'lr 0.01' in out and '350 ep, bs 128, lr 0.1 (x0.1 at 150/250/320)' in out
    # SRDwithDIST's beta: 10 (the 80.39 run, WRN-40-2 -> WRN-40-1, every capacity pair), 4 for WRN-40-4 -> WRN-16-2
    beta = {c.split('/')[2]: d.split('beta=')[1].split(')')[0] for c, (d, _) in cells.items() if '/SRDwithDIST/s0' in c}
    assert beta == {'WRN-40-4_WRN-16-4': '10.0', 'WRN-40-2_WRN-40-1': '10.0', 'WRN-40-4_WRN-16-2': '4.0', 'WRN-40-4_MobileNetV2': '10.0',
                    'ResNet-18_MobileNetV2': '10.0', 'ResNet-20_ResNet-14': '10.0', 'ResNet-32_ResNet-14': '10.0',
                    'ResNet-56_ResNet-14': '10.0', 'ResNet-110_ResNet-14': '10.0'}, beta
    for t in ['WRN-40-4', 'ResNet-18']: assert 'hint at f3 of both networks' in cells[f'CIFAR-100/distill/{t}_MobileNetV2/FitNet/s0'][0]
    # precision: stated for every cell; the precision experiment runs each of its cells in both
    assert all(d.split('), ')[1].startswith(('fp32', 'bf16')) for d, _ in cells.values())
    for seed in range(3):
        for m in ['KD', 'SRD']:
            assert ', fp32' in cells[f'CIFAR-100/distill/WRN-40-2_WRN-40-1/{m}/s{seed}'][0]
            assert ', bf16' in cells[f'CIFAR-100/distill/WRN-40-2_WRN-40-1/{m}-bf16/s{seed}'][0]
    # the teacher-assistant chain: the KD student of ResNet-110 teaches ResNet-14
    assert cells['CIFAR-100/distill/ResNet-110_ResNet-32_ResNet-14/KD/s0'][1] == 'CIFAR-100/distill/ResNet-110_ResNet-32/KD/s0'
    assert 'ResNet-32 -> ResNet-14' in cells['CIFAR-100/distill/ResNet-110_ResNet-32_ResNet-14/KD/s0'][0]

def test_dry_run_pretrain_and_ablation_grids(tmp_path):
    out, cells = dry_run('pretrain.yaml', tmp_path/'p')
    assert '19 cells (19 from scratch, 0 distillation)' in out
    assert {'CIFAR-10/train/ResNet-8/s0', 'CIFAR-10/train/ResNet-32/s0', 'CIFAR-100/train/ResNet-50/s0',
            'CIFAR-100/train/MobileNetV2-x0.5/s0', 'CIFAR-100/train/WRN-16-1/s0', 'CIFAR-100/train/ResNet-44/s0'} <= set(cells)
    out, cells = dry_run('ablations.yaml', tmp_path/'a')
    assert '24 cells (5 from scratch, 19 distillation)' in out
    at = [d for c, (d, _) in cells.items() if '/AT-' in c]
    assert len(at) == 3 and all(d.startswith('AT(alpha=0.0,') for d in at)
    fit = [d for c, (d, _) in cells.items() if '/FitNet-' in c]
    assert len(fit) == 3 and all('hint_epochs=50' in d for d in fit)
    for m in ['SRDwithKL', 'SRDwithPMSE']: assert f'CIFAR-100/distill/WRN-40-2_WRN-40-1/{m}/s0' in cells
    assert cells['CIFAR-100/distill/WRN-16-4_WRN-16-4/DML/s0'][1] == ''  # a peer trained from scratch: waits for nothing

def test_two_runners_share_a_grid(tiny_spec, tmp_path):
    out = tmp_path/'g'
    ps = [subprocess.Popen([*KDNB, 'grid', 'run', tiny_spec, '--out', out, '--workers', '1'], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in ps]
    assert [p.returncode for p in ps] == [0, 0], outs
    assert len(finished(out)) == 4
    assert dict(starts(out)) == {c: 1 for c in starts(out)} and len(starts(out)) == 4, events(out)  # each cell ran exactly once

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
        assert dict(starts(tmp_path/'g')) == {c: 1 for c in starts(tmp_path/'g')} and len(starts(tmp_path/'g')) == 4  # each cell ran exactly once
    finally: subprocess.run([ray, 'stop', '--force'], capture_output=True, env=env, timeout=120)

BAD = {
    'experiments: [1, 2': ('not valid YAML',),
    'experiments:\n  main:\n    pairs: [WRN-40-4 -> WRN-99-1]\n    methods: [KD]\n': ("experiment 'main', pair 'WRN-40-4 -> WRN-99-1', field 'pairs': unknown model 'WRN-99-1'",),
    'experiments:\n  main:\n    pairs: [WRN-40-4 -> WRN-16-4]\n    methods: [KD, NoSuchKD]\n': ("experiment 'main', field 'methods': unknown method 'NoSuchKD'",),
    'dataset: mnist\nexperiments:\n  main:\n    pairs: [WRN-40-4 -> WRN-16-4]\n    methods: [KD]\n': ("top level, field 'dataset': unknown dataset 'mnist'",),
    'epochs: -3\nexperiments:\n  main:\n    models: [WRN-16-1]\n': ("top level, field 'epochs': must be an integer >= 1",),
    'experiments:\n  main:\n    pairs: [WRN-40-4 -> WRN-16-4]\n    methods: [KD]\n    hparams: {KD: {beta: 3}}\n': ("method 'KD', field 'hparams': method KD has no hyper-parameter 'beta'",),
    'experiments:\n  main:\n    pairs: [WRN-40-4 -> WRN-16-4]\n    methods: [KD]\n    hparams: {KD: {WRN-40-4 -> WRN-16-4: {tau: 3}}}\n':
        ("experiment 'main', method 'KD', pair 'WRN-40-4 -> WRN-16-4', field 'hparams': method KD has no hyper-parameter 'tau'",),
    'experiments:\n  main:\n    pairs: [WRN-40-4 -> WRN-16-4]\n    methods: [SRDwithDIST]\n    hparams: {SRDwithDIST: {WRN-40-2 -> WRN-40-1: {beta: 4}}}\n':
        ("experiment 'main', method 'SRDwithDIST', field 'hparams': pair 'WRN-40-2 -> WRN-40-1' of SRDwithDIST is not in this experiment's pairs",),
    'experiments:\n  main:\n    pairs: [ResNet-110 -> ResNet-32 -> ResNet-14]\n    methods: [DML]\n': ("method 'DML', field 'pairs': DML trains its peer from scratch",),
    'precision: fp16\nexperiments:\n  main:\n    models: [WRN-16-1]\n': ("top level, field 'precision': must be one of fp32, bf16",),
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

def test_non_finite_cell_is_failed_never_a_number(tmp_path):
    "A cell whose loss became NaN/inf is recorded as failed (error.json names the epoch), and the table shows 'failed', not a top-1."
    spec = tmp_path/'nan.yaml'
    spec.write_text("dataset: cifar10-subset\nepochs: 1\nmax_items: 64\nbs: 16\nlr: 1.0e+30\nexperiments:\n  main:\n    models: [ResNet-8]\n")
    r = run_main('grid', 'run', spec, '--out', tmp_path/'g', '--workers', '1')
    assert r.returncode == 1 and 'failed' in r.stdout, r.stdout
    err = json.loads((tmp_path/'g'/'cells'/'cifar10-subset'/'train'/'ResNet-8'/'s0'/'error.json').read_text())
    assert 'not finite' in err['message'] and 'epoch 0' in err['message'], err['message']
    t = run_main('grid', 'table', tmp_path/'g', check=True).stdout
    assert '| ResNet-8 | failed |' in t, t

def test_one_local_worker_per_gpu(tmp_path, monkeypatch):
    "With N GPUs the local backend runs N cells at once, each child process seeing one GPU (a made-up GPU count on a CPU)."
    import kdnb.grid as grid, kdnb.grid.backends as backends
    monkeypatch.setattr(backends, '_gpu_count', lambda: 3)
    envs = []
    class Worker:  # a cell's worker process, ended at once
        def __init__(self, env, out, params, notebook=None): envs.append(env)
        def outcomes(self): return []
        def kill(self): pass
    monkeypatch.setattr(backends, 'Worker', Worker)
    b = grid.LocalBackend(tmp_path)
    assert (b.workers, b.device, b.free()) == (3, 'cuda', 3)
    cells = grid.load_plan(SMOKE).cells
    for c in cells[:3]: b.submit([c], [grid.cell_parameters(c, tmp_path)])
    assert b.free() == 0 and [e['CUDA_VISIBLE_DEVICES'] for e in envs] == ['0', '1', '2']
    b.poll(1)  # the children are done: their slots are free again
    b.submit([cells[3]], [grid.cell_parameters(cells[3], tmp_path)])
    assert envs[-1]['CUDA_VISIBLE_DEVICES'] in {'0', '1', '2'} and b.free() == 2
    assert grid.LocalBackend(tmp_path, device='cpu').device == 'cpu'  # --device cpu keeps cells off the GPUs

def test_fused_grid(tmp_path):
    "`fuse: true`: the distillation cells of one student and teacher train in one fused run, each writing its own finished cell."
    spec = tmp_path/'fused.yaml'; spec.write_text('fuse: true\n' + TINY.replace('[KD, DIST]', '[KD, DIST, AT]'))
    dry = run_main('grid', 'run', spec, '--out', tmp_path/'dry', '--dry-run', check=True).stdout
    assert 'fuse: 3 cells in 1 fused runs' in dry
    out = tmp_path/'g'
    r = run_main('grid', 'run', spec, '--out', out, check=True)
    assert '5/5 cells finished' in r.stdout, r.stdout
    fused = {e['cell']: e.get('fused_in') for e in events(out) if e['event'] == 'start' and '/distill/' in e['cell']}
    assert len(fused) == 3 and len(set(fused.values())) == 1 and None not in fused.values(), fused  # one run for the three
    for cid in fused:
        res = json.loads((out/'cells'/cid/'results.json').read_text())
        assert res['cell'] == cid and abs(res['evaluation']['top1'] - res['last']['top1']) < 1e-3 and len(res['fused_with']) == 2
        assert (out/'cells'/cid/'cell.json').exists() and 'fuse' not in json.loads((out/'cells'/cid/'cell.json').read_text())
    t = run_main('grid', 'table', out, check=True).stdout
    assert '| KD |' in t and '| AT |' in t and 'pending' not in t
    r = run_main('grid', 'run', spec, '--out', out, check=True)
    assert '5 finished, 0 to run' in r.stdout
