"""Bad inputs and faults, as a table: each is refused with exit 2 and one `kdnb: error:` line (no traceback),
and no file that existed before the command changes (hashes before/after). Most run `kdnb.cli.main` in-process."""
import hashlib, json, os, pickle, shutil, signal
from pathlib import Path
import pytest
from conftest import run_main, has_cuda, two_cell_grid, TWO_CELL_GRID

RUN = ['--epochs', '1', '--max-items', '64', '--bs', '16', '--no-progress']
TRAIN = ['train', '--model', 'ResNet-8', *RUN]
DISTILL = ['distill', '--teacher', 'ResNet-8', '--teacher-ckpt', '{W}/teacher/last.pt', '--student', 'ResNet-8', '--method', 'KD', *RUN]

def _replace(argv, flag, value):
    i = argv.index(flag); return [*argv[:i + 1], value, *argv[i + 2:]]

# name -> (argv, words the error line must contain). {W} is the shared folder of earlier files, {C} this case's folder.
CASES = {
    # silently wrong before: values that cannot work, caught before training
    'lr nan': ([*TRAIN, '--lr', 'nan', '--out', '{C}'], ['--lr', 'must be a finite number', 'nan']),  # not the non-finite loss a run with it meets
    'lr inf': ([*TRAIN, '--lr', 'inf', '--out', '{C}'], ['--lr', 'must be a finite number', 'inf']),
    'lr negative': ([*TRAIN, '--lr', '-0.1', '--out', '{C}'], ['lr', '-0.1']),
    'epochs 0': ([*_replace(TRAIN, '--epochs', '0'), '--out', '{C}'], ['--epochs', '0']),
    'epochs negative': ([*_replace(TRAIN, '--epochs', '-2'), '--out', '{C}'], ['--epochs', '-2']),
    'bs 0': ([*_replace(TRAIN, '--bs', '0'), '--out', '{C}'], ['--bs', '0']),
    'bs negative': ([*_replace(TRAIN, '--bs', '-4'), '--out', '{C}'], ['--bs', '-4']),
    'workers negative': ([*TRAIN, '--workers', '-1', '--out', '{C}'], ['--workers', '-1']),
    'max-items 0': ([*_replace(TRAIN, '--max-items', '0'), '--out', '{C}'], ['--max-items']),
    'max-items negative': ([*_replace(TRAIN, '--max-items', '-5'), '--out', '{C}'], ['--max-items']),
    'seed negative': ([*TRAIN, '--seed', '-1', '--out', '{C}'], ['--seed']),
    'zero batches (one image, which batch norm cannot train on)': ([*_replace(TRAIN, '--max-items', '1'), '--out', '{C}'], ['no training batch', '1 training image', '--bs']),
    'T 0': ([*DISTILL, '--T', '0', '--out', '{C}'], ['T', '> 0']),
    'T negative': ([*DISTILL, '--T', '-4', '--out', '{C}'], ['T', '> 0']),
    'tau 0': ([*_replace(DISTILL, '--method', 'DIST'), '--tau', '0', '--out', '{C}'], ['tau', '> 0']),
    'alpha nan': ([*DISTILL, '--alpha', 'nan', '--out', '{C}'], ['alpha', 'finite']),
    'hint-epochs negative': ([*_replace(DISTILL, '--method', 'FitNet'), '--hint-epochs', '-1', '--out', '{C}'], ['--hint-epochs']),
    'loss becomes non-finite': ([*DISTILL, '--lr', '1e30', '--out', '{C}'], ['epoch 0', 'not finite', 'kd']),
    'epochs not a number': ([*_replace(TRAIN, '--epochs', 'abc'), '--out', '{C}'], ['--epochs', 'abc']),
    'unknown flag': ([*TRAIN, '--epohcs', '3', '--out', '{C}'], ['--epohcs']),
    'missing --out': (TRAIN, ['--out']),
    'bench steps 0': (['bench', '--steps', '0'], ['--steps']),
    # tracebacks before
    'device cuda without GPU': ([*TRAIN, '--device', 'cuda', '--out', '{C}'], ['cuda', 'device']),
    'device nonsense': ([*TRAIN, '--device', 'gpu7', '--out', '{C}'], ['gpu7', 'device']),
    'out is a file': ([*TRAIN, '--out', '{W}/afile.txt'], ['afile.txt', 'not a folder']),
    'out read-only': ([*TRAIN, '--out', '{W}/readonly/run'], ['readonly']),
    'teacher-ckpt missing (.pth)': (_replace(DISTILL, '--teacher-ckpt', '{W}/nope.pth') + ['--out', '{C}'], ['nope.pth', 'does not exist']),
    'teacher-ckpt a folder': (_replace(DISTILL, '--teacher-ckpt', '{W}/teacher') + ['--out', '{C}'], ['teacher', 'folder']),
    'teacher-ckpt random bytes': (_replace(DISTILL, '--teacher-ckpt', '{W}/random.bin') + ['--out', '{C}'], ['random.bin', 'corrupt']),
    'teacher-ckpt a JSON file': (_replace(DISTILL, '--teacher-ckpt', '{W}/teacher/results.json') + ['--out', '{C}'], ['results.json']),
    'teacher-ckpt truncated': (_replace(DISTILL, '--teacher-ckpt', '{W}/trunc.pt') + ['--out', '{C}'], ['trunc.pt', 'corrupt']),
    'CIFAR file of text': ([*TRAIN, '--dataset', 'CIFAR-100', '--data-root', '{W}/cifar-text', '--out', '{C}'], ['not a readable CIFAR']),
    'CIFAR file of a list': ([*TRAIN, '--dataset', 'CIFAR-100', '--data-root', '{W}/cifar-list', '--out', '{C}'], ['official layout']),
    # the grid
    'grid workers -1': (['grid', 'run', '{W}/tiny.yaml', '--out', '{C}', '--workers', '-1'], ['--workers', '-1']),
    'grid workers 0': (['grid', 'run', '{W}/tiny.yaml', '--out', '{C}', '--workers', '0'], ['--workers', '0']),
    'grid lr .inf': (['grid', 'run', '{W}/lr-inf.yaml', '--out', '{C}'], ["field 'lr'", 'inf']),
    'grid lr .nan': (['grid', 'run', '{W}/lr-nan.yaml', '--out', '{C}'], ["field 'lr'", 'nan']),
    'grid epochs 0': (['grid', 'run', '{W}/epochs-0.yaml', '--out', '{C}'], ["field 'epochs'"]),
    'grid hparam T 0': (['grid', 'run', '{W}/t0.yaml', '--out', '{C}'], ["field 'hparams'", 'T']),
    'grid notebook missing': (['grid', 'run', '{W}/tiny.yaml', '--out', '{C}', '--notebook', '{W}/nope.ipynb'], ['nope.ipynb']),
    'grid device cuda without GPU': (['grid', 'run', '{W}/tiny.yaml', '--out', '{C}', '--device', 'cuda'], ['cuda']),
    'resume from a bare state_dict': ([*TRAIN, '--resume', '--out', '{W}/bare'], ['cannot resume']),
    'grid out is a file': (['grid', 'run', '{W}/tiny.yaml', '--out', '{W}/afile.txt'], ['afile.txt', 'not a folder']),
    'grid spec changed after a cell ran': (['grid', 'run', '{W}/epochs-2.yaml', '--out', '{W}/grid'], ['epochs', 'ResNet-8/s0']),
    'grid table: results of another schema': (['grid', 'table', '{W}/grid-schema'], []),  # exit 0: the cell shows as failed
    'train --resume while another process runs it': ([*TRAIN, '--resume', '--out', '{W}/locked'], ['another', 'locked']),
}
OK_CASES = {'grid table: results of another schema'}  # answered, not refused: checked below

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "Earlier files every case must leave alone: a trained teacher, damaged files, specs, grid folders."
    W = tmp_path_factory.mktemp('world')
    run_main('train', '--model', 'ResNet-8', *RUN, '--out', W/'teacher', check=True)
    (W/'afile.txt').write_text('not a folder\n')
    (W/'readonly').mkdir(); (W/'readonly').chmod(0o555)
    (W/'random.bin').write_bytes(os.urandom(4096))
    (W/'trunc.pt').write_bytes((W/'teacher'/'last.pt').read_bytes()[:3000])
    for name, content in (('cifar-text', b'hello\n'), ('cifar-list', pickle.dumps([1, 2, 3]))):
        d = W/name/'cifar-100-python'; d.mkdir(parents=True)
        for f in ('train', 'test', 'meta'): (d/f).write_bytes(content)
    (W/'tiny.yaml').write_text(TWO_CELL_GRID)
    (W/'lr-inf.yaml').write_text(two_cell_grid(lr='.inf')); (W/'lr-nan.yaml').write_text(two_cell_grid(lr='.nan'))
    (W/'epochs-0.yaml').write_text(two_cell_grid(epochs=0)); (W/'epochs-2.yaml').write_text(two_cell_grid(epochs=2))
    (W/'t0.yaml').write_text(TWO_CELL_GRID + "    hparams: {KD: {T: 0}}\n")
    from kdnb.grid import load_plan, cell_dir, cell_identity
    from kdnb.core import save_json
    plan = load_plan(W/'tiny.yaml')
    for out in ('grid', 'grid-schema'):  # a grid whose teacher cell ran with the spec of tiny.yaml
        (W/out).mkdir(); shutil.copy(W/'tiny.yaml', W/out/'grid.yaml')
        save_json(cell_identity(plan.cells[0]), cell_dir(W/out, plan.cells[0].id)/'cell.json')
    save_json({'last': {'top1': 0.5}, 'evaluation': {'top1': 0.5}}, cell_dir(W/'grid-schema', plan.cells[0].id)/'results.json')
    (W/'locked').mkdir()
    (W/'bare').mkdir(); shutil.copy(W/'teacher'/'config.json', W/'bare'/'config.json')  # a run folder whose last.pt is only weights
    import torch
    torch.save(torch.load(W/'teacher'/'last.pt', weights_only=False)['model'], W/'bare'/'last.pt')
    return W

def _hashes(root) -> dict:
    return {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in Path(root).rglob('*') if p.is_file() and p.name != '.run.lock'}

class TimeLimit(Exception): pass

def _alarm(*a): raise TimeLimit("ran for over 60 s: it trained instead of refusing, or hung")

@pytest.mark.parametrize('name', list(CASES))
def test_bad_input(name, world):
    argv, needles = CASES[name]
    if 'cuda without GPU' in name and has_cuda(): pytest.skip('this machine has a GPU')
    if name == 'out read-only' and os.geteuid() == 0: pytest.skip('root writes into read-only folders')
    case = world/'cases'/name.replace(' ', '_').replace('/', '_')
    argv = [a.replace('{W}', str(world)).replace('{C}', str(case)) for a in argv]
    before = _hashes(world)
    lock = None
    if name.startswith('train --resume while'):
        from kdnb.core import DirLock
        lock = DirLock(world/'locked', '.run.lock'); assert lock.acquire()
    old = signal.signal(signal.SIGALRM, _alarm); signal.alarm(60)
    try: r = run_main(*argv)
    finally:
        signal.alarm(0); signal.signal(signal.SIGALRM, old)
        if lock: lock.release()
    after = _hashes(world)
    assert 'Traceback' not in r.stderr + r.stdout, r.stderr
    assert {p: h for p, h in after.items() if p in before} == before, 'an earlier file changed'
    assert not [p for p in after if p not in before and p.name in ('results.json', 'last.pt')], 'a result was written'
    if name in OK_CASES:
        assert r.returncode == 0, r.stderr
        assert 'failed' in r.stdout and '50.00' not in r.stdout  # the unreadable cell is never shown as a number
        return
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith('kdnb: error: '), (r.returncode, r.stderr)
    for n in needles: assert n.lower() in lines[0].lower(), lines[0]

def test_failed_start_does_not_block_the_corrected_command(tmp_path):
    "A run that fails in its first epoch leaves only config.json: the corrected command starts there, without --resume."
    out = tmp_path/'run'
    r = run_main(*TRAIN, '--lr', '1e30', '--out', out)
    assert r.returncode == 2 and 'not finite' in r.stderr and not (out/'last.pt').exists()
    run_main(*TRAIN, '--out', out, check=True)
    assert json.loads((out/'config.json').read_text())['lr'] == 0.1 and (out/'results.json').exists()

def test_lost_config_is_restored_from_the_checkpoint(tmp_path):
    "config.json corrupt or deleted: --resume reads the run's config from last.pt (and rewrites config.json); another run is still refused."
    out = tmp_path/'run'
    run_main(*TRAIN, '--out', out, check=True)
    good = (out/'config.json').read_text()
    for damage in (lambda: (out/'config.json').write_text('{"kind": '), lambda: (out/'config.json').unlink()):
        damage()
        run_main(*TRAIN, '--out', out, '--resume', check=True)
        assert json.loads((out/'config.json').read_text()) == json.loads(good)
    r = run_main(*_replace(TRAIN, '--model', 'ResNet-14'), '--out', out, '--resume')
    assert r.returncode == 2 and 'holds another run' in r.stderr

def test_renamed_checkpoint_is_a_teacher(world, tmp_path):
    "A kdnb checkpoint under another name (teacher.pth), or a bare state_dict, is a valid --teacher-ckpt."
    import torch
    shutil.copy(world/'teacher'/'last.pt', tmp_path/'teacher.pth')
    torch.save(torch.load(world/'teacher'/'last.pt', weights_only=False)['model'], tmp_path/'weights.bin')
    for ck in ('teacher.pth', 'weights.bin'):
        run_main(*_replace(DISTILL, '--teacher-ckpt', str(tmp_path/ck)), '--out', tmp_path/ck.split('.')[0], check=True)
