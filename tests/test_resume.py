"Crash recovery: a resumed run continues from its checkpoint and ends exactly where an uninterrupted one does."
import json, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest, torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from kdnb.models.core import create_model
from kdnb.config import Recipe
from kdnb.train import make_learner, fit_run
from kdnb.data import subset_dataloaders
from conftest import KDNB, run_main, mark_checkpointed_epochs, assert_resumed

RECIPE = Recipe(epochs=3, milestones=(2,), lr=0.05)

class Crash(Callback):
    "Simulate a kill right after epoch `n` has been checkpointed."
    order = 99
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n: raise KeyboardInterrupt

def run(out, crash_after=None, speed=None):
    set_seed(0)
    learn = make_learner(subset_dataloaders(n_train=128, n_valid=64, bs=32), create_model('ResNet-8', 10), RECIPE, out,
                         cbs=[Crash(crash_after)] if crash_after else [], speed=speed)
    try: return learn, fit_run(learn, RECIPE, out, {'model': 'ResNet-8'}, resume=True, progress=False)
    except KeyboardInterrupt: return learn, None

def test_resume_gives_same_final_weights(tmp_path):
    ref, ref_res = run(tmp_path/'straight')
    _, crashed = run(tmp_path/'resumed', crash_after=1)
    assert crashed is None and pd.read_csv(tmp_path/'resumed'/'history.csv').epoch.tolist() == [0]
    marked = mark_checkpointed_epochs(tmp_path/'resumed')
    res_learn, res = run(tmp_path/'resumed')
    assert_resumed(marked)
    assert res['epochs'] == 3 and pd.read_csv(tmp_path/'resumed'/'history.csv').epoch.tolist() == [0, 1, 2]
    for (k, a), b in zip(ref.model.state_dict().items(), res_learn.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert ref_res['last']['top1'] == res['last']['top1']

def test_step_graph_resumes_exactly(tmp_path):
    "With the speed option step_graph the momentum buffers are the optimiser's: checkpointed and loaded, so a resumed run ends where an uninterrupted one does."
    from kdnb.fast import Speed
    sp = Speed(step_graph=True)
    ref, _ = run(tmp_path/'straight', speed=sp)
    run(tmp_path/'resumed', crash_after=1, speed=sp)
    state = torch.load(tmp_path/'resumed'/'last.pt', weights_only=False)['opt']['state']
    assert state and all(s['momentum_buffer'].abs().sum() > 0 for s in state.values())  # the epoch's buffers, in the checkpoint
    marked = mark_checkpointed_epochs(tmp_path/'resumed')
    res_learn, res = run(tmp_path/'resumed', speed=sp)
    assert_resumed(marked)
    assert res['epochs'] == 3 and all(torch.equal(a, b) for a, b in zip(ref.model.state_dict().values(), res_learn.model.state_dict().values()))

def test_kill_the_cli_and_resume(tmp_path):
    "A real SIGKILL mid-run: the checkpoint stays loadable and --resume completes the run."
    out = tmp_path/'run'
    train = ['train', '--model', 'ResNet-8', '--epochs', '3', '--max-items', '1024', '--out', str(out), '--no-progress']
    p = subprocess.Popen([*KDNB, *train], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out/'last.pt').exists() and time.time() < deadline and p.poll() is None: time.sleep(0.2)
    p.send_signal(signal.SIGKILL); p.wait()
    assert (out/'last.pt').exists() and not (out/'results.json').exists()
    assert 1 <= len(pd.read_csv(out/'history.csv')) < 3
    marked = mark_checkpointed_epochs(out)
    r = subprocess.run([*KDNB, *train, '--resume'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_resumed(marked)
    hist = pd.read_csv(out/'history.csv')
    assert hist.epoch.tolist() == [0, 1, 2], hist
    assert json.loads((out/'results.json').read_text())['epochs'] == 3
    # a finished run, asked to resume again, does nothing and reports its results
    r2 = run_main(*train, '--resume')
    assert r2.returncode == 0 and 'results.json' in r2.stdout

from kdnb.distill import distill_model
import kdnb.train

def two_stage_fitnet(out, teacher_ckpt):
    return distill_model(model='WRN-16-1', teacher='ResNet-8', method='FitNet', teacher_ckpt=teacher_ckpt, out=out, epochs=2, hparams=dict(hint_epochs=2), max_items=64, bs=16,
                         resume=True, progress=False, speed='off', device='cpu')

def kill_at(monkeypatch, k:int, before_save:bool):
    "Make the k-th epoch checkpoint of the process raise KeyboardInterrupt (a kill), just before or just after it is saved."
    saves, real = [], kdnb.train.Checkpointer.after_epoch
    def after_epoch(self):
        saves.append(1)
        if len(saves) == k and before_save: raise KeyboardInterrupt
        real(self)
        if len(saves) == k: raise KeyboardInterrupt
    monkeypatch.setattr(kdnb.train.Checkpointer, 'after_epoch', after_epoch)

def final_state(out):
    ckpt = torch.load(out/'last.pt', map_location='cpu', weights_only=False)
    return ckpt['model'], pd.read_csv(out/'history.csv').drop(columns='seconds'), pd.read_csv(out/'hint'/'history.csv').drop(columns='seconds')

@pytest.mark.parametrize('k,before_save', [(1, False), (2, False), (3, True), (3, False)],
                         ids=['mid-hint', 'hint-done-no-results', 'after-hint-results', 'mid-main'])
def test_two_stage_fitnet_resumes_exactly(tmp_path, monkeypatch, k, before_save):
    "Killed in the hint stage, between the stages or in the main stage, `resume` ends with the weights and history of an uninterrupted run."
    teacher = tmp_path/'teacher.pth'
    torch.save(create_model('ResNet-8', 10).state_dict(), teacher)
    two_stage_fitnet(tmp_path/'straight', teacher)
    with monkeypatch.context() as m:
        kill_at(m, k, before_save)
        with pytest.raises(KeyboardInterrupt): two_stage_fitnet(tmp_path/'killed', teacher)
    assert not (tmp_path/'killed'/'results.json').exists()
    marked = mark_checkpointed_epochs(tmp_path/'killed'/'hint', tmp_path/'killed')
    two_stage_fitnet(tmp_path/'killed', teacher)
    if (k, before_save) != (3, True): assert_resumed(marked)  # killed before the main stage's first checkpoint: nothing to resume
    (w0, h0, hint0), (w1, h1, hint1) = final_state(tmp_path/'straight'), final_state(tmp_path/'killed')
    assert w0.keys() == w1.keys() and all(torch.equal(w0[n], w1[n]) for n in w0), [n for n in w0 if not torch.equal(w0[n], w1[n])][:5]
    pd.testing.assert_frame_equal(hint0, hint1); pd.testing.assert_frame_equal(h0, h1)
    assert 'hint' in hint0.columns and 'hint' not in h0.columns and len(h0) == 2

def test_fused_run_resumes_exactly(tmp_path, monkeypatch):
    "Fused students killed after an epoch resume from their own checkpoints (the optimiser's slices put back together) and end as an uninterrupted fused run."
    from kdnb.fused import distill_fused, fused_configs, FusedCheckpointer
    from kdnb.config import RunConfig
    methods = ['KD', 'AT', 'DIST']
    def runs(out, resume=False): return fused_configs(RunConfig('ResNet-8', teacher='WRN-16-1', epochs=3, max_items=64, bs=16, speed='off', device='cpu',
                                                                progress=False, out=out, resume=resume), methods)
    distill_fused(runs(tmp_path/'whole'))
    real = FusedCheckpointer.after_epoch
    def killed(self): real(self); raise KeyboardInterrupt
    monkeypatch.setattr(FusedCheckpointer, 'after_epoch', killed)
    with pytest.raises(KeyboardInterrupt): distill_fused(runs(tmp_path/'cut'))
    monkeypatch.setattr(FusedCheckpointer, 'after_epoch', real)
    assert all(torch.load(tmp_path/'cut'/m/'last.pt', weights_only=False)['epoch'] == 1 for m in methods)
    marked = mark_checkpointed_epochs(*(tmp_path/'cut'/m for m in methods))
    distill_fused(runs(tmp_path/'cut', resume=True))
    assert_resumed(marked)
    for m in methods:
        a, b = (torch.load(tmp_path/run/m/'last.pt', weights_only=False) for run in ('whole', 'cut'))
        assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model']), m
        strip = lambda h: [{k: v for k, v in r.items() if k != 'seconds'} for r in h]
        assert strip(a['history']) == strip(b['history']) and len(a['history']) == 3, m
