"""Interruptions resume exactly: `kill -9` at a random moment, then `--resume` (or the same grid command again), ends with
the weights AND the per-epoch history of an uninterrupted run. CPU, tiny models and data; the kill moments (seconds after training
began) are printed when a test fails, so a failure can be replayed."""
import json, os, random, shutil, signal, subprocess, time
from pathlib import Path
import pandas as pd, pytest, torch
from conftest import KDNB, run_main, two_cell_grid

ENV = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'}  # one thread: the same float sums in every process
SMALL = ['--max-items', '64', '--bs', '16', '--no-progress']

def run(args, kill_after:float|None=None, watch=None):
    """Run `kdnb args`; returns (seconds taken, seconds until `watch` appeared). With `kill_after`, SIGKILL it that many seconds
    after `watch` appears (at once if it exists; e.g. config.json: training has begun), if it has not finished by then."""
    t0, seen = time.time(), None
    p = subprocess.Popen([*KDNB, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    while watch is not None and seen is None and p.poll() is None:
        if watch(): seen = time.time() - t0
        else: time.sleep(0.05)
    try: _, err = p.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL); p.communicate()
        return time.time() - t0, seen
    assert kill_after is not None or p.returncode == 0, err
    return time.time() - t0, seen

def kill_times(took, seen, n=1) -> list[float]:
    "`n` random moments between the start of training and the end of an uninterrupted run."
    rng = random.Random()
    return [round(rng.uniform(0, took - seen), 2) for _ in range(n)]

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

def test_kill_distill_and_resume(teacher, tmp_path):
    "(a) a one-stage distillation, killed twice at random moments, resumed each time, equals an uninterrupted run."
    args = ['distill', '--teacher', 'ResNet-8', '--teacher-ckpt', teacher, '--student', 'ResNet-8', '--method', 'KD', '--epochs', '3', *SMALL]
    took, seen = run([*args, '--out', tmp_path/'straight'], watch=(tmp_path/'straight').exists)
    kills = kill_times(took, seen, 2)
    for k in kills: run([*args, '--out', tmp_path/'killed', '--resume'], kill_after=k, watch=(tmp_path/'killed').exists)
    run([*args, '--out', tmp_path/'killed', '--resume'])
    assert_same_run(tmp_path/'straight', tmp_path/'killed', f"killed {kills} s after the run folder appeared (uninterrupted: {took - seen:.1f} s from then)")

def test_kill_two_stage_fitnet_and_resume(teacher, tmp_path):
    "(b) FitNet's hint stage then its main stage, killed twice at random moments and resumed: the same weights and both stages' histories."
    args = ['distill', '--teacher', 'ResNet-8', '--teacher-ckpt', teacher, '--student', 'ResNet-8', '--method', 'FitNet',
            '--hint-epochs', '2', '--epochs', '2', *SMALL]
    took, seen = run([*args, '--out', tmp_path/'straight'], watch=(tmp_path/'straight').exists)
    kills = kill_times(took, seen, 2)
    for k in kills: run([*args, '--out', tmp_path/'killed', '--resume'], kill_after=k, watch=(tmp_path/'killed').exists)
    run([*args, '--out', tmp_path/'killed', '--resume'])
    what = f"killed {kills} s after the run folder appeared (uninterrupted: {took - seen:.1f} s from then)"
    assert_same_run(tmp_path/'straight', tmp_path/'killed', what)
    pd.testing.assert_frame_equal(history(tmp_path/'straight'/'hint'), history(tmp_path/'killed'/'hint'), check_exact=True, obj=f"{what}: hint stage")


def events(out) -> list[dict]:
    f = Path(out)/'events.jsonl'
    return [json.loads(l) for l in f.read_text().splitlines()] if f.exists() else []

def test_kill_grid_move_it_and_rerun(tmp_path):
    """(c) a grid killed at a random moment while its distillation cell runs (its teacher cell done), moved to another folder (as a
    second machine mounting it elsewhere would see it) and run again: no stale lock, the finished cell is not run again, and both
    cells end with the weights, history and results of an uninterrupted grid."""
    spec = tmp_path/'tiny.yaml'; spec.write_text(two_cell_grid(epochs=2))
    def teacher_done(out): return lambda: any(e['event'] == 'done' for e in events(out))
    took, seen = run(['grid', 'run', spec, '--out', tmp_path/'straight', '--workers', '1'], watch=teacher_done(tmp_path/'straight'))
    kill, = kill_times(took, seen)
    run(['grid', 'run', spec, '--out', tmp_path/'killed', '--workers', '1'], kill_after=kill, watch=teacher_done(tmp_path/'killed'))
    done_before = {e['cell'] for e in events(tmp_path/'killed') if e['event'] == 'done'}
    time.sleep(3)  # the cell's worker dies with the runner; its kernel notices within a second
    from kdnb.grid import is_locked
    assert not any(is_locked(l.parent) for l in (tmp_path/'killed').rglob('.lock'))
    shutil.move(tmp_path/'killed', tmp_path/'moved')
    run(['grid', 'run', spec, '--out', tmp_path/'moved', '--workers', '1'])
    starts = [e['cell'] for e in events(tmp_path/'moved') if e['event'] == 'start']
    assert len(done_before) >= 1 and all(starts.count(c) == 1 for c in done_before), (done_before, starts)
    cells = sorted(p.parent.relative_to(tmp_path/'straight') for p in (tmp_path/'straight').rglob('results.json'))
    assert len(cells) == 2
    for c in cells: assert_same_run(tmp_path/'straight'/c, tmp_path/'moved'/c, f"{c}, grid killed {kill} s after its teacher cell finished")
