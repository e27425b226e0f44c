"One run in several processes (DDP through fastai's DistributedTrainer), on CPU processes over gloo: the same code a run on several GPUs takes."
import json, os, signal, subprocess, time
from pathlib import Path
import pandas as pd, pytest, torch, torch.nn.functional as F
from conftest import KDNB, run_kdnb, run_main, ROOT
from kdnb.core import process_gone
from kdnb.distributed import run_in_processes
from ddp_target import toy_data, toy_model

TESTS = Path(__file__).resolve().parent

def test_two_processes_take_the_global_batchs_step(monkeypatch, tmp_path):
    """Two processes of 16 images each end with the weights of one SGD on the 32 images of each global step, to float
    precision: DDP averages the gradients, and each process reads its half of the epoch's order (fastai's DistributedDL).
    The launch leaves nothing in the temporary folder of its processes (torchrun's logs go with the launch's own folder)."""
    monkeypatch.setenv('PYTHONPATH', f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv('TMPDIR', str(tmp_path))
    got = run_in_processes('ddp_target:train_toy', dict(bs=32, epochs=2, lr=0.1), 2)
    assert not list(tmp_path.iterdir()), f"left in the temporary folder: {sorted(p.name for p in tmp_path.iterdir())}"
    x, y = toy_data()
    net = toy_model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    halves = [list(range(0, 32)), list(range(32, 64))]  # process r's share of the (unshuffled) epoch
    for epoch in range(2):
        for k in range(2):
            idx = halves[0][16 * k:16 * k + 16] + halves[1][16 * k:16 * k + 16]
            opt.zero_grad(); F.cross_entropy(net(x[idx]), y[idx]).backward(); opt.step()
    for k, v in net.state_dict().items(): torch.testing.assert_close(torch.tensor(got[k]), v, rtol=1e-5, atol=1e-6)
    # a check that can fail: one process's own 16 images a step give other weights
    alone = toy_model(); opt = torch.optim.SGD(alone.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for epoch in range(2):
        for k in range(2):
            idx = halves[0][16 * k:16 * k + 16]
            opt.zero_grad(); F.cross_entropy(alone(x[idx]), y[idx]).backward(); opt.step()
    assert not torch.allclose(torch.tensor(got['weight']), alone.weight, rtol=1e-3)

DISTIL = ['distill', '--teacher', 'WRN-16-2', '--student', 'WRN-16-1', '--method', 'KD', '--epochs', '2', '--max-items', '512',
          '--bs', '32', '--device', 'cpu', '--no-progress']

def final_weights(out): return torch.load(Path(out)/'last.pt', weights_only=False)['model']

def _processes_naming(text) -> list[int]:
    "The running processes (zombies aside) whose command line contains `text`."
    found = []
    for d in Path('/proc').iterdir():
        try:
            if d.name.isdigit() and str(text) in (d/'cmdline').read_bytes().decode(errors='replace') and not process_gone(int(d.name)):
                found.append(int(d.name))
        except OSError: pass  # exited meanwhile
    return found

def test_cli_two_processes_write_once_resume_and_match_one(tmp_path):
    "`kdnb distill --gpus 2`: one set of run files, a SIGKILL after an epoch resumes to the uninterrupted run's weights, and the loss of one process."
    whole = run_kdnb(*DISTIL, '--gpus', '2', '--out', tmp_path/'whole', check=True)
    assert 'top-1' in whole.stdout
    files = sorted(p.name for p in (tmp_path/'whole').iterdir() if not p.name.startswith('.'))
    assert files == ['config.json', 'history.csv', 'last.pt', 'results.json'], files  # process 0 alone writes
    cfg = json.loads((tmp_path/'whole'/'config.json').read_text())
    assert cfg['processes'] == 2 and cfg['bs'] == 32 and cfg['sync_bn'] is False

    out = tmp_path/'killed'
    (tmp_path/'tmp').mkdir()  # the killed launch cannot remove its temporary folder: it goes into the test's
    p = subprocess.Popen([*KDNB, *DISTIL, '--gpus', '2', '--out', str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env={**os.environ, 'TMPDIR': str(tmp_path/'tmp')})  # torchrun and its processes: one group to kill
    deadline = time.time() + 300
    while not (out/'history.csv').exists() and time.time() < deadline and p.poll() is None: time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    # torchrun's processes, in sessions of their own, end with their launcher rather than finish the run themselves
    deadline = time.time() + 10
    while _processes_naming(out) and time.time() < deadline: time.sleep(0.1)
    assert not _processes_naming(out), "the run's processes outlived the killed launch"
    assert pd.read_csv(out/'history.csv').epoch.tolist() == [0] and not (out/'results.json').exists()
    run_kdnb(*DISTIL, '--gpus', '2', '--out', out, '--resume', check=True)
    assert pd.read_csv(out/'history.csv').epoch.tolist() == [0, 1]
    for (k, a), b in zip(final_weights(tmp_path/'whole').items(), final_weights(out).values()): assert torch.equal(a, b), k

    # one process with the same global batch: the same images each epoch, in other groups, and BatchNorm over 32 images
    # rather than each process's 16 (SyncBN needs GPUs), so the epoch's loss agrees closely, not exactly
    run_main(*DISTIL, '--out', tmp_path/'one', check=True)
    two, one = (pd.read_csv(tmp_path/d/'history.csv').train_loss for d in ('whole', 'one'))
    assert abs(two[0] - one[0]) / one[0] < 0.03, (two[0], one[0])
    r = run_main(*DISTIL, '--out', tmp_path/'whole', '--resume')  # the same run in one process is another run
    assert r.returncode == 2 and 'processes: 2 there' in r.stderr, r.stderr

def test_refused_in_several_processes(tmp_path):
    "What cannot be split over processes is one clear error, from the command or from its processes."
    r = run_kdnb(*DISTIL, '--gpus', '2', '--bs', '33', '--out', tmp_path/'a')
    assert r.returncode == 2 and 'pass --bs a multiple of 2' in r.stderr.splitlines()[-1], r.stderr
    r = run_kdnb(*[a if a != 'KD' else 'CRD' for a in DISTIL], '--gpus', '2', '--out', tmp_path/'b')
    assert r.returncode == 2 and 'CRD cannot train in several processes' in r.stderr.splitlines()[-1], r.stderr
    r = run_main(*[a if a != 'KD' else 'KD,AT' for a in DISTIL], '--gpus', '2', '--out', tmp_path/'c')
    assert r.returncode == 2 and 'fused students train in one process' in r.stderr
    r = run_main(*DISTIL, '--sync-bn', '--out', tmp_path/'d')
    assert r.returncode == 2 and '--sync-bn goes with --gpus' in r.stderr
    assert not any((tmp_path/d/'results.json').exists() for d in 'abcd')

GPUS2 = """dataset: cifar10-subset
epochs: 1
max_items: 64
bs: 16
gpus: 2
experiments:
  main:
    models: [ResNet-8]
"""

def test_grid_cell_with_gpus_takes_that_many_slots(tmp_path, monkeypatch):
    "A cell with `gpus: 2` takes two of the local backend's slots: both GPUs in its CUDA_VISIBLE_DEVICES (a made-up GPU count on a CPU)."
    import kdnb.grid as grid, kdnb.grid.backends as backends
    spec = tmp_path/'g.yaml'; spec.write_text(GPUS2)
    monkeypatch.setattr(backends, '_gpu_count', lambda: 3)
    envs = []
    class Worker:  # a cell's worker process, still running
        def __init__(self, env, out, params, notebook=None): envs.append(env)
        def outcomes(self): return None
        def kill(self): pass
    monkeypatch.setattr(backends, 'Worker', Worker)
    cell = grid.load_plan(spec).cells[0]
    assert cell.gpus == 2 and grid.cell_parameters(cell, tmp_path)['config']['gpus'] == 2 and '2 GPUs' in cell.describe()
    b = grid.LocalBackend(tmp_path)
    b.submit([cell], [grid.cell_parameters(cell, tmp_path)])
    assert envs[-1]['CUDA_VISIBLE_DEVICES'] == '0,1' and b.free() == 1
    spec.write_text(GPUS2.replace('gpus: 2', 'gpus: 4'))
    r = run_main('grid', 'run', spec, '--out', tmp_path/'out')
    assert r.returncode == 2 and 'asks for gpus: 4' in r.stderr and 'at most 3' in r.stderr, r.stderr

@pytest.mark.parametrize('text,error', [
    (GPUS2.replace('gpus: 2', 'gpus: 0'), "field 'gpus': must be an integer >= 1"),
    (GPUS2.replace('models: [ResNet-8]', 'pairs: [ResNet-14 -> ResNet-8]\n    methods: [CRD]'), "CRD cannot train in several processes"),
])
def test_bad_gpus_in_a_spec(tmp_path, text, error):
    spec = tmp_path/'g.yaml'; spec.write_text(text)
    r = run_main('grid', 'run', spec, '--out', tmp_path/'out')
    assert r.returncode == 2 and error in r.stderr, r.stderr

def test_grid_runs_a_cell_on_two_processes(tmp_path):
    "End to end on CPU: the cell's papermill notebook starts its run on two processes (torchrun), in two worker slots."
    spec = tmp_path/'g.yaml'; spec.write_text(GPUS2)
    r = run_kdnb('grid', 'run', spec, '--out', tmp_path/'out', '--workers', '2', '--device', 'cpu', check=True)
    assert '1/1 cells finished' in r.stdout, r.stdout
    cell = tmp_path/'out'/'cells'/'cifar10-subset'/'train'/'ResNet-8'/'s0'
    assert json.loads((cell/'config.json').read_text())['processes'] == 2
    assert 'evaluation' in json.loads((cell/'results.json').read_text())
