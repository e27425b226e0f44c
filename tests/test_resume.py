"Crash recovery: a resumed run continues from its checkpoint and ends exactly where an uninterrupted one does."
import json, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest, torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from kdnb.models.core import create_model
from kdnb.train import Recipe, make_learner, fit_run, _tiny_subset_dls
from conftest import KDNB

RECIPE = Recipe(epochs=3, milestones=(2,), lr=0.05)

class Crash(Callback):
    "Simulate a kill right after epoch `n` has been checkpointed."
    order = 99
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n: raise KeyboardInterrupt

def run(out, crash_after=None):
    set_seed(0)
    learn = make_learner(_tiny_subset_dls(n_train=128, n_valid=64, bs=32), create_model('ResNet-8', 10), RECIPE, out,
                         cbs=[Crash(crash_after)] if crash_after else [])
    try: return learn, fit_run(learn, RECIPE, out, {'model': 'ResNet-8'}, resume=True, progress=False)
    except KeyboardInterrupt: return learn, None

def test_resume_gives_same_final_weights(tmp_path):
    ref, ref_res = run(tmp_path/'straight')
    _, crashed = run(tmp_path/'resumed', crash_after=1)
    assert crashed is None and pd.read_csv(tmp_path/'resumed'/'history.csv').epoch.tolist() == [0]
    res_learn, res = run(tmp_path/'resumed')
    assert res['epochs'] == 3 and pd.read_csv(tmp_path/'resumed'/'history.csv').epoch.tolist() == [0, 1, 2]
    for (k, a), b in zip(ref.model.state_dict().items(), res_learn.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert ref_res['last']['top1'] == res['last']['top1']

def test_kill_the_cli_and_resume(tmp_path):
    "A real SIGKILL mid-run: the checkpoint stays loadable and --resume completes the run."
    out = tmp_path/'run'
    args = [KDNB, 'train', '--model', 'ResNet-8', '--epochs', '3', '--out', str(out), '--no-progress']
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out/'last.pt').exists() and time.time() < deadline and p.poll() is None: time.sleep(0.2)
    p.send_signal(signal.SIGKILL); p.wait()
    assert (out/'last.pt').exists() and not (out/'results.json').exists()
    assert 1 <= len(pd.read_csv(out/'history.csv')) < 3
    r = subprocess.run(args + ['--resume'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    hist = pd.read_csv(out/'history.csv')
    assert hist.epoch.tolist() == [0, 1, 2], hist
    assert json.loads((out/'results.json').read_text())['epochs'] == 3
    # a finished run, asked to resume again, does nothing and reports its results
    r2 = subprocess.run(args + ['--resume'], capture_output=True, text=True)
    assert r2.returncode == 0 and 'results.json' in r2.stdout
