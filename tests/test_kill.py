"""Interruptions resume exactly: `kill -9` at a random moment, then `--resume` (or the same grid command again), ends with
the weights AND the per-epoch history of an uninterrupted run. CPU, tiny models and data; the kill moments (seconds after training
began) are printed when a test fails, so a failure can be replayed."""
import json, os, random, shutil, signal, subprocess, time
from pathlib import Path
import pandas as pd, pytest, torch
from conftest import KDNB, run_main, two_cell_grid, mark_checkpointed_epochs, assert_resumed

ENV = {'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'}  # one thread: the same float sums in every process

@pytest.fixture(autouse=True)
def killed_commands_write_temporary_files_here(tmp_path, monkeypatch):
    "A command killed with SIGKILL cannot remove its temporary files: they go into the test's folder, not the system's."
    (tmp_path/'tmp').mkdir(); monkeypatch.setenv('TMPDIR', str(tmp_path/'tmp'))

SMALL = ['--max-items', '64', '--bs', '16', '--no-progress']

def run(args, kill_after:float|None=None, watch=None):
    """Run `kdnb args`. With `kill_after`, SIGKILL it that many seconds after `watch()` is true (at once if it is), if it has
    not finished by then."""
    p = subprocess.Popen([*KDNB, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    while watch is not None and p.poll() is None and not watch(): time.sleep(0.01)
    try: _, err = p.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL); p.wait(); p.stderr.close()  # not communicate(): a child that outlived it could hold the pipe open
        return
    assert kill_after is not None or p.returncode == 0, err

def weights(run_dir) -> dict: return torch.load(Path(run_dir)/'last.pt', map_location='cpu', weights_only=False)['model']

def history(run_dir) -> pd.DataFrame:
    "history.csv without the wall time of each epoch (the one column that may differ)."
    return pd.read_csv(Path(run_dir)/'history.csv').drop(columns='seconds')

def results(run_dir) -> dict:
    "results.json without timings and versions."
    r = json.loads((Path(run_dir)/'results.json').read_text())
    r['history'] = [{k: v for k, v in h.items() if k != 'seconds'} for h in r['history']]
    return {k: v for k, v in r.items() if k not in ('wall_time_s', 'this_session_s', 'cell_wall_time_s', 'versions')}

def assert_same_run(a, b, what):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys(), what
    for k in wa: assert torch.equal(wa[k], wb[k]), f"{what}: {k} differs"
    pd.testing.assert_frame_equal(history(a), history(b), check_exact=True, obj=f"{what}: history.csv")
    assert results(a) == results(b), f"{what}: results.json"

@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp('teacher')/'run'
    run_main('train', '--model', 'ResNet-8', '--epochs', '1', *SMALL, '--out', out, check=True)
    return out/'last.pt'

def stage_histories(out) -> list[pd.DataFrame]:
    "The history.csv of each stage of the run in `out` written so far (a two-stage method's hint stage first)."
    return [pd.read_csv(f) for f in (Path(out)/'hint'/'history.csv', Path(out)/'history.csv') if f.exists()]

def epochs_done(out) -> int:
    "Epochs checkpointed in run folder `out`, both stages of a two-stage method counted."
    return sum(map(len, stage_histories(out)))

def epoch_seconds(out) -> float:
    "The median wall time of an epoch of the finished run in `out`."
    return float(pd.concat(stage_histories(out)).seconds.median())

def kill_and_resume(args, out, after:tuple, epoch_s:float) -> list[float]:
    """`kdnb args --out out --resume`, once for each number n of `after`, SIGKILLed at a random moment of the epoch after its n-th
    checkpoint; then once more to the end. Each kill must leave a run to resume, and each resumed run must go on from the
    checkpoint (its epochs marked) rather than train from scratch. Returns the kills' delays after the checkpoint."""
    delays, marked = [], {}
    for n in after:
        delays.append(round(random.uniform(0, 0.8 * epoch_s), 3))
        run([*args, '--out', out, '--resume'], kill_after=delays[-1], watch=lambda: epochs_done(out) >= n)
        assert epochs_done(out) >= n and not (Path(out)/'results.json').exists(), f"killed {delays} s after the checkpoints: the run had ended"
        if marked: assert_resumed(marked)
        marked = mark_checkpointed_epochs(Path(out)/'hint', out)
    run([*args, '--out', out, '--resume'])
    assert_resumed(marked)
    return delays

def test_kill_distill_and_resume(teacher, tmp_path):
    "(a) a one-stage distillation, killed in its 2nd epoch and, resumed, in its 3rd, then resumed again, equals an uninterrupted run."
    args = ['distill', '--teacher', 'ResNet-8', '--teacher-ckpt', teacher, '--student', 'ResNet-8', '--method', 'KD', '--epochs', '4', *SMALL]
    run([*args, '--out', tmp_path/'straight'])
    kills = kill_and_resume(args, tmp_path/'killed', (1, 2), epoch_seconds(tmp_path/'straight'))
    assert_same_run(tmp_path/'straight', tmp_path/'killed', f"killed {kills} s after the 1st and the 2nd checkpoint")

def test_kill_two_stage_fitnet_and_resume(teacher, tmp_path):
    "(b) FitNet's hint stage (2 epochs) then its main stage (3), killed in the hint stage's 2nd epoch and, resumed, in the main stage's 2nd: the same weights and both stages' histories."
    args = ['distill', '--teacher', 'ResNet-8', '--teacher-ckpt', teacher, '--student', 'ResNet-8', '--method', 'FitNet',
            '--hint-epochs', '2', '--epochs', '3', *SMALL]
    run([*args, '--out', tmp_path/'straight'])
    kills = kill_and_resume(args, tmp_path/'killed', (1, 3), epoch_seconds(tmp_path/'straight'))
    what = f"killed {kills} s after the 1st and the 3rd checkpoint"
    assert_same_run(tmp_path/'straight', tmp_path/'killed', what)
    pd.testing.assert_frame_equal(history(tmp_path/'straight'/'hint'), history(tmp_path/'killed'/'hint'), check_exact=True, obj=f"{what}: hint stage")

def events(out) -> list[dict]:
    f = Path(out)/'events.jsonl'
    return [json.loads(l) for l in f.read_text().splitlines()] if f.exists() else []

def test_kill_grid_move_it_and_rerun(tmp_path):
    """(c) a grid killed at a random moment of its distillation cell's first epoch (its teacher cell done), moved to another folder
    (as a second machine mounting it elsewhere would see it) and run again: no process of the killed grid lives on to finish the
    cell, no stale lock, the finished cell is not run again, and both cells end with the weights, history and results of an
    uninterrupted grid."""
    # 20 epochs: the distillation cell killed in its first has seconds of training left, more than its processes take to end
    # with the grid (the teacher cell trains as many: a grid's cells share their settings)
    spec = tmp_path/'tiny.yaml'; spec.write_text(two_cell_grid(epochs=20))
    run(['grid', 'run', spec, '--out', tmp_path/'straight', '--workers', '1'])
    cells = sorted(p.parent.relative_to(tmp_path/'straight') for p in (tmp_path/'straight').rglob('results.json'))
    distill, = [c for c in cells if 'distill' in c.parts]
    assert len(cells) == 2
    kill = round(random.uniform(0, 0.8 * epoch_seconds(tmp_path/'straight'/distill)), 3)
    run(['grid', 'run', spec, '--out', tmp_path/'killed', '--workers', '1'], kill_after=kill, watch=(tmp_path/'killed'/distill/'config.json').exists)
    done_before = {e['cell'] for e in events(tmp_path/'killed') if e['event'] == 'done'}
    assert not (tmp_path/'killed'/distill/'results.json').exists(), f"killed {kill} s after the cell's run began: it had ended"
    time.sleep(3)  # the cell's worker ends with the runner within half a second; its kernel notices within a second more
    from kdnb.grid import is_locked
    from kdnb.core import DirLock
    assert not any(is_locked(l.parent) for l in (tmp_path/'killed').rglob('.lock'))
    for l in (tmp_path/'killed').rglob('.run.lock'):  # a run's own lock, held by the kernel that trains it
        with DirLock(l.parent, l.name) as free: assert free.acquire(), f"{l.parent} is still being trained after the kill"
    assert not (tmp_path/'killed'/distill/'results.json').exists(), "a process of the killed grid lived on and finished the cell"
    shutil.move(tmp_path/'killed', tmp_path/'moved')
    run(['grid', 'run', spec, '--out', tmp_path/'moved', '--workers', '1'])
    starts = [e['cell'] for e in events(tmp_path/'moved') if e['event'] == 'start']
    assert len(done_before) >= 1 and all(starts.count(c) == 1 for c in done_before), (done_before, starts)
    for c in cells: assert_same_run(tmp_path/'straight'/c, tmp_path/'moved'/c, f"{c}, grid killed {kill} s after its distillation cell's run began")
