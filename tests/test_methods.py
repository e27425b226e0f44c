"The method zoo from outside: `kdnb methods` lists every method, and methods with state (DKD's warm-up, VID's variances) resume exactly."
import pandas as pd, pytest, torch
from kdnb.methods import list_methods, create_method
from kdnb.distill import distill_model
from kdnb.models.core import create_model
import kdnb.train
from conftest import mark_checkpointed_epochs, assert_resumed

def test_methods_lists_every_method_with_defaults_and_paper(kdnb_main):
    out = kdnb_main('methods', check=True).stdout.splitlines()
    assert [l.split()[0] for l in out] == list_methods()
    line = dict((l.split()[0], l) for l in out)
    assert "'beta': 8.0" in line['DKD'] and "'warmup': 20" in line['DKD'] and 'Decoupled Knowledge Distillation, CVPR 2022' in line['DKD']
    assert "'logit_stand': False" in line['KD']  # the optional hyper-parameters too
    assert all('[' in line[n] for n in ('DKD', 'SP', 'CC', 'VID', 'RKD', 'PKT', 'NST', 'KDSVD', 'CRD', 'FSP', 'AB', 'FT', 'OFD', 'ReviewKD'))

def test_bad_hparam_is_refused_before_training(kdnb_main):
    r = kdnb_main('distill', '--teacher', 'ResNet-8', '--student', 'ResNet-8', '--method', 'RKD', '--tau', '2', '--out', 'unused')
    assert r.returncode == 2 and "method RKD has no hyper-parameter 'tau'" in r.stderr, r.stderr
    r = kdnb_main('distill', '--teacher', 'ResNet-8', '--student', 'ResNet-8', '--method', 'DKD', '--logit-stand', 'maybe', '--out', 'unused')
    assert r.returncode == 2 and "'maybe' is not true or false" in r.stderr, r.stderr
    r = kdnb_main('distill', '--teacher', 'ResNet-8', '--student', 'ResNet-8', '--method', 'RKD', '--warmup', '5', '--out', 'unused')
    assert r.returncode == 2 and "method RKD has no hyper-parameter 'warmup'" in r.stderr, r.stderr

def distil(out, teacher, method, **hp):
    return distill_model(model='WRN-16-1', teacher='ResNet-8', method=method, teacher_ckpt=teacher, out=out, epochs=2, max_items=48, bs=16,
                         resume=True, progress=False, speed='off', device='cpu', hparams=hp)

def kill_after_first_checkpoint(monkeypatch):
    real = kdnb.train.Checkpointer.after_epoch
    def after_epoch(self): real(self); raise KeyboardInterrupt
    monkeypatch.setattr(kdnb.train.Checkpointer, 'after_epoch', after_epoch)

@pytest.mark.parametrize('method,hp', [('DKD', {}), ('VID', {}), ('CRD', {'nce_k': 64})], ids=['DKD', 'VID', 'CRD'])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, method, hp):
    "DKD's loss depends on the epoch (warm-up), VID trains variances and regressors, CRD keeps a memory bank and draws negatives: each ends as an uninterrupted run."
    teacher = tmp_path/'teacher.pth'
    torch.save(create_model('ResNet-8', 10).state_dict(), teacher)
    distil(tmp_path/'straight', teacher, method, **hp)
    with monkeypatch.context() as m:
        kill_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt): distil(tmp_path/'killed', teacher, method, **hp)
    marked = mark_checkpointed_epochs(tmp_path/'killed')
    distil(tmp_path/'killed', teacher, method, **hp)
    assert_resumed(marked)
    w0, w1 = [torch.load(d/'last.pt', map_location='cpu', weights_only=False)['model'] for d in (tmp_path/'straight', tmp_path/'killed')]
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0), [k for k in w0 if not torch.equal(w0[k], w1[k])][:5]
    saved = {'VID': 'method.raw_vars.0', 'CRD': 'method.memory_s'}  # the variances, the memory: saved with the run
    if method in saved: assert saved[method] in w0
    h0, h1 = [pd.read_csv(d/'history.csv').drop(columns='seconds') for d in (tmp_path/'straight', tmp_path/'killed')]
    pd.testing.assert_frame_equal(h0, h1)

def test_plugin_declaring_only_features_never_gets_precomputed_logits(tmp_path):
    "A method that sets only `needs_features` (as a plugin would) is refused pre-computed or cached logits, before training."
    from kdnb.methods import Method, register_method, METHODS
    from kdnb.core import KdnbError
    @register_method('FeatOnlyProbe')
    class FeatOnly(Method):
        needs_features = True
        def forward(self, s, t, y, ce): return {'ce': ce + 0 * (s.final.mean() - t.final.mean())}
    try:
        assert not create_method('FeatOnlyProbe').logits_only
        with pytest.raises(KdnbError, match='FeatOnlyProbe cannot use pre-computed teacher logits'):
            distill_model(model='ResNet-8', teacher='ResNet-8', method='FeatOnlyProbe', out=tmp_path/'x', teacher_logits='precomputed', epochs=1, max_items=32, bs=16, device='cpu')
        assert not (tmp_path/'x').exists()
    finally: METHODS._items.pop('featonlyprobe')

@pytest.mark.parametrize('method', ['FitNet', 'DIST', 'SRD', 'SRDwithDIST'])
def test_main_table_methods_train_alike_in_one_compiled_step(method):
    "The reference's main-table methods (KD and AT: in `10_distill`) with the speed option step_graph: the weights move as in fastai's loop, and each loss term sums alike."
    from kdnb.core import scratch_dir
    from fastai.torch_core import set_seed
    from kdnb.config import Recipe
    from kdnb.data import subset_dataloaders
    from kdnb.distill import distill_learner
    from kdnb.fast import Speed
    def trained(speed):
        set_seed(0)
        learn, lr = distill_learner(subset_dataloaders(n_train=32, n_valid=16, bs=16), create_model('ResNet-8', 10), create_model('ResNet-14', 10).eval(),
                                    create_method(method), Recipe(epochs=1), scratch_dir(), speed=speed)
        start = torch.cat([p.detach().flatten().clone() for p in learn.model.parameters()])
        with learn.no_bar(), learn.no_logging(): learn.fit(1, lr)
        return start, torch.cat([p.detach().flatten() for p in learn.model.parameters()]), {k: float(v) for k, v in learn.distiller.sums.items()}
    (w0, eager, e_sums), (_, graphed, g_sums) = trained(Speed()), trained(Speed(step_graph=True))
    # rounding apart (DIST's correlations of nearly flat distributions magnify it), the two runs move the weights alike: a
    # missing term or a wrong gradient would differ by a fair part of the move itself
    assert (eager - graphed).norm() < 0.02 * (eager - w0).norm(), ((eager - graphed).norm(), (eager - w0).norm())
    assert e_sums.keys() == g_sums.keys() and all(abs(e_sums[k] - g_sums[k]) <= 1e-2 * abs(e_sums[k]) + 1e-6 for k in e_sums), (e_sums, g_sums)

def test_epoch_schedule_is_an_input_of_the_compiled_step(tmp_path):
    "A loss weight that changes with the epoch (DKD's and ReviewKD's warm-ups) reaches the compiled step (speed option step_graph) as a tensor: each epoch trains as fastai's loop does, and the step compiles once, not once an epoch."
    from conftest import WrittenInputs, compiled_alone
    from kdnb.config import RunConfig
    from kdnb.fused import distill_fused, fused_configs
    common = dict(model='ResNet-8', teacher='ResNet-8', method='DKD', epochs=3, max_items=32, bs=16, progress=False, device='cpu', hparams={'warmup': 3})
    eager = distill_model(out=tmp_path/'eager', speed='off', **common)
    with compiled_alone(), WrittenInputs() as w: graphed = distill_model(out=tmp_path/'graphed', speed='off,step_graph', **common)
    assert len(w.steps) == 1, [len(g[0]) for g in w.graphs]
    for a, b in zip(eager['history'], graphed['history']):  # a weight compiled in as the first epoch's would drift from the second on
        assert abs(a['nckd'] - b['nckd']) < 1e-3 * abs(a['nckd']), (eager['history'], graphed['history'])
    with compiled_alone(), WrittenInputs() as w: distill_fused(fused_configs(RunConfig(out=tmp_path/'fused', speed='off,step_graph', **{**common, 'hparams': {}}), ['DKD', 'ReviewKD']))
    assert len(w.steps) == 1, [len(g[0]) for g in w.graphs]
