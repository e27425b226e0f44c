"Speed options end to end: `kdnb bench`, the device pipeline and the teacher cache through `kdnb distill`, and the GPU checks."
import json, re
import pytest, torch
from conftest import run_kdnb, run_main, has_cuda, WrittenInputs, compiled_alone
from test_cli import one_line_error

def test_bench_cpu_prints_ratio():
    r = run_kdnb('bench', '--device', 'cpu', '--pair', 'ResNet-8:ResNet-8', '--steps', '3', '--warmup', '1', '--workers', '0', '--images', '256',
                 '--rounds', '2', '--cache-images', '64', check=True)
    lines = r.stdout.strip().splitlines()
    assert re.fullmatch(r'ratio kdnb/reference: \d+\.\d\d \(best variant, median of 2 rounds; range \d+\.\d\d-\d+\.\d\d\)', lines[-1]), lines[-1]
    for label in ['reference', 'kdnb, all options off', '+ teacher cache']: assert any(l.startswith(label) for l in lines), r.stdout
    one_line_error(run_main('bench', '--device', 'cpu', '--pair', 'WRN-40-4'), 'TEACHER:STUDENT')

def test_bench_fused_with_speed_options():
    "`kdnb bench --fused --speed S`: every loop timed (each student alone, then fused) trains with the speed options asked for."
    out = run_kdnb('bench', '--fused', '--device', 'cpu', '--speed', 'off', '--methods', 'KD,AT', '--pair', 'ResNet-8:ResNet-8', '--steps', '1',
                   '--rounds', '1', '--warmup', '1', '--images', '128', check=True).stdout
    assert 'speed off: each alone' in out and re.search(r'speed-up of fused over one after another: \d+\.\d\dx \(2 students', out), out
    assert ('the fused students run side by side on 2 worker threads' in out) == (torch.get_num_interop_threads() > 1), out  # on a CPU of 2 cores or more
    one_line_error(run_main('bench', '--speed', 'off'), '--methods and --speed go with --fused or --profile')

def test_bench_profile_shows_where_a_step_goes():
    "`kdnb bench --profile`: a step's wall time, the host time of each callback event, and a table of the costliest operations; a fused loop with --methods."
    common = ['bench', '--profile', '--device', 'cpu', '--pair', 'ResNet-8:ResNet-8', '--steps', '2', '--warmup', '1', '--bs', '16', '--images', '64']
    out = run_kdnb(*common, '--methods', 'KD,AT', '--speed', 'off', check=True).stdout
    assert 'ResNet-8 -> ResNet-8 KD+AT, batch 16, cpu, speed off' in out and re.search(r'^wall \d+\.\d\d ms/step', out, re.M), out
    assert re.search(r'^host time per step: .*FusedDistiller\.after_loss \d+\.\d{3} ms', out, re.M) and 'Self CPU' in out, out
    one_line_error(run_main(*common, '--methods', 'Nope'), "unknown method 'Nope'")

def test_bench_dispatch_prints_the_loops_own_time():
    "`kdnb bench --dispatch`: fastai's Learner, LeanLearner and a hand-written loop, per step, and the loop's own time over the hand-written one."
    lines = run_kdnb('bench', '--dispatch', '--steps', '5', '--rounds', '1', check=True).stdout.strip().splitlines()
    assert [l.split('  ')[0] for l in lines[-5:-1]] == ["fastai's Learner", 'LeanLearner', '+ step_graph', 'hand-written loop'], lines
    assert re.match(r"the loop's own time per step over the hand-written one: fastai's Learner -?\d+\.\d\d ms, LeanLearner -?\d+\.\d\d ms, "
                    r"with step_graph -?\d+\.\d\d ms", lines[-1]), lines[-1]

def test_distill_with_device_pipeline_and_teacher_cache(tmp_path):
    common = ['--epochs', '1', '--bs', '32', '--max-items', '64', '--no-progress', '--device', 'cpu']
    run_main('train', '--model', 'ResNet-8', '--out', tmp_path/'t', '--speed', 'off,device_data', *common, check=True)
    for i, speed in enumerate(['off,device_data,teacher_cache', 'off,device_data,teacher_cache']):
        r = run_main('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', tmp_path/'t'/'last.pt', '--student', 'ResNet-8',
                     '--method', 'DIST', '--speed', speed, '--out', tmp_path/f's{i}', *common, check=True)
        res = json.loads((tmp_path/f's{i}'/'results.json').read_text())
        assert res['config']['speed'] == 'device_data,teacher_cache' and 0 <= res['last']['top1'] <= 1
    caches = list((tmp_path/'t'/'logit_cache').glob('*.pt'))
    assert len(caches) == 1  # built by the first student, found by the second
    # a method that needs the teacher's features runs without the cache, and says so
    r = run_main('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', tmp_path/'t'/'last.pt', '--student', 'ResNet-8',
                 '--method', 'SRD', '--speed', 'off,device_data,teacher_cache', '--out', tmp_path/'srd', *common, check=True)
    assert 'teacher_cache is off' in r.stdout
    one_line_error(run_main('distill', '--teacher', 'ResNet-8', '--student', 'ResNet-8', '--speed', 'fast,warp', '--out', tmp_path/'x', *common),
                   "unknown speed option 'warp'")

def test_teacher_cache_trains_as_the_online_teacher(tmp_path):
    "Speed option teacher_cache changes nothing a run computes: a KD run looking its teacher's logits up ends with the loss and weights of the run whose teacher runs online, to the last bits of fp32 (an fp16 cache's rounding fails this)."
    from kdnb.train import train_model
    from kdnb.distill import distill_model
    common = dict(epochs=2, max_items=64, bs=16, progress=False, device='cpu')
    train_model(model='ResNet-8', out=tmp_path/'t', speed='off,device_data', **common)
    runs = {s: distill_model(model='ResNet-8', teacher='ResNet-8', teacher_ckpt=tmp_path/'t'/'last.pt', method='KD', speed=f'off,device_data{s}',
                             out=tmp_path/f'kd{s}', **common) for s in ('', ',teacher_cache')}
    assert runs[',teacher_cache']['config']['speed'] == 'device_data,teacher_cache', runs
    online, cached = (runs[s]['last']['train_loss'] for s in ('', ',teacher_cache'))
    assert abs(cached - online) <= 1e-6 * abs(online), (online, cached)
    w = [torch.load(tmp_path/f'kd{s}'/'last.pt', weights_only=False)['model'] for s in ('', ',teacher_cache')]
    assert all(torch.allclose(w[0][k].float(), w[1][k].float(), rtol=1e-5, atol=1e-7) for k in w[0]), 'the students\' weights differ'

def test_compile_on_cpu(tmp_path):
    """torch.compile's path (inductor's C++ backend on a CPU): the compiled student trains like the eager one, the epoch's last
    partial batch included. The whole step as one compiled function (speed option step_graph) trains alike too, and is the CPU
    twin of CUDA graph trees accepting it: one graph a batch shape, writing only static inputs (parameters, buffers, momentum)."""
    from kdnb.distill import distill_model
    from kdnb.config import RunConfig
    from kdnb.fused import distill_fused, fused_configs
    common = dict(model='ResNet-8', teacher='ResNet-8', epochs=1, max_items=56, bs=16, progress=False, device='cpu')  # batches of 16, 16, 16 and 8
    def alike(res, eager, rel): return abs(res['last']['train_loss'] - eager['last']['train_loss']) < rel * abs(eager['last']['train_loss'])
    eager = distill_model(out=tmp_path/'eager', speed='off', **common)
    with compiled_alone(): compiled = distill_model(out=tmp_path/'compiled', speed='off,compile', **common)
    assert compiled['config']['speed'] == 'compile=default' and alike(compiled, eager, 1e-3), (compiled['last'], eager['last'])
    with compiled_alone(), WrittenInputs() as w: graphed = distill_model(out=tmp_path/'graphed', speed='off,step_graph', **common)
    assert graphed['config']['speed'] == 'step_graph' and alike(graphed, eager, 1e-3), (graphed['last'], eager['last'])
    steps = w.steps
    assert len(steps) == 2 and all(len(written) > 50 for written, _ in steps), [len(g[0]) for g in w.graphs]  # no break splits a step
    assert all(not_static == [] for _, not_static in steps), f"the step writes inputs that are not static: {steps}"
    # autocast inside the compiled step (whole batches: the partial one is checked above)
    with compiled_alone(): bf16 = distill_model(out=tmp_path/'graphed-bf16', speed='off,step_graph', precision='bf16', **{**common, 'max_items': 48})
    assert alike(bf16, eager, 0.05), (bf16['last'], eager['last'])
    # a logit method's student and a feature method's, of one class, compiled in one fused run: the second one's hooks still
    # record (dynamo would otherwise reuse the first one's hookless graph for it)
    with compiled_alone(): fused = distill_fused(fused_configs(RunConfig(method='KD', out=tmp_path/'fused', speed='off,compile', **common), ['KD', 'AT']))
    assert [r['config']['method'] for r in fused] == ['KD', 'AT'] and all(r['last']['train_loss'] > 0 for r in fused), fused

def test_step_graph_suits_cuda_graphs(tmp_path):
    """The CPU twin of CUDA graph trees accepting the whole step of fused students (speed option step_graph), stacked or not:
    one graph a step, writing only static inputs (a lone student's step: `test_compile_on_cpu`)."""
    from kdnb.config import RunConfig
    from kdnb.fused import distill_fused, fused_configs
    common = dict(model='ResNet-8', teacher='ResNet-8', epochs=1, max_items=48, bs=16, progress=False, device='cpu', speed='fast,compile=reduce-overhead,step_graph')
    for name, speed in [('fused', common['speed']), ('stacked', common['speed'] + ',stacked')]:
        with compiled_alone(), WrittenInputs() as w:
            distill_fused(fused_configs(RunConfig(method='AT', out=tmp_path/name, **{**common, 'speed': speed}), ['AT', 'FitNet']))
        steps = w.steps
        assert len(steps) == 1 and len(steps[0][0]) > 50, (name, [len(g[0]) for g in w.graphs])  # one graph: no break splits the step
        assert steps[0][1] == [], f"{name} AT,FitNet: the step writes inputs that are not static: {steps[0][1]}"

GPU_RUN = ['--epochs', '1', '--bs', '64', '--max-items', '512', '--no-progress', '--device', 'cuda']
def on_gpu(test):
    "Mark `test` GPU-only: the GPU check runs it (`-m gpu`, in parallel workers); without CUDA it is skipped."
    return pytest.mark.gpu(pytest.mark.skipif(not has_cuda(), reason='needs a CUDA GPU')(test))

@pytest.fixture(scope='module')
def gpu_teacher(tmp_path_factory):
    "A ResNet-8 trained for one short epoch on the GPU with `fast` (the train command's GPU path): the teacher of the GPU runs below."
    out = tmp_path_factory.mktemp('gpu-teacher')
    run_kdnb('train', '--model', 'ResNet-8', '--out', out, '--speed', 'fast', *GPU_RUN, check=True)
    return out/'last.pt'

@on_gpu
def test_device_pipeline_on_the_gpu():
    "The device data pipeline on the GPU draws the same views as on the CPU."
    import torch
    from kdnb.fast import device_dataloaders
    a, b = (device_dataloaders('cifar10-subset', bs=64, device=d, max_items=256, seed=0) for d in ('cuda', 'cpu'))
    (xa, ya, ia, va), (xb, yb, ib, vb) = next(iter(a.train)), next(iter(b.train))
    assert torch.equal(ia.cpu(), ib) and torch.equal(va.cpu(), vb) and torch.allclose(xa.cpu(), xb, atol=1e-5)

@pytest.mark.parametrize('speed,precision', [('fast', 'fp32'), ('fast', 'bf16'), ('fast,compile=reduce-overhead', 'bf16'), ('fast,teacher_cache', 'bf16'),
                                             ('fast,compile=reduce-overhead,step_graph', 'fp32'), ('fast,compile=reduce-overhead,step_graph,teacher_cache', 'bf16')])
@on_gpu
def test_gpu_paths(gpu_teacher, tmp_path, speed, precision):
    "What only a GPU runs, a few batches each: device data on the GPU, channels_last, cuDNN autotune, bf16, CUDA graphs (the networks' and the whole step's), the cache."
    run_kdnb('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', gpu_teacher, '--student', 'ResNet-8', '--method', 'KD',
             '--speed', speed, '--precision', precision, '--out', tmp_path/'s', *GPU_RUN, check=True, timeout=900)
    res = json.loads((tmp_path/'s'/'results.json').read_text())
    assert res['config']['precision'] == precision and 0 < res['last']['top1'] <= 1 and res['last']['train_loss'] == res['last']['train_loss']

# the second: one graph a step; the third: the students stacked into one network inside it
@pytest.mark.parametrize('speed', ['fast,compile=reduce-overhead', 'fast,compile=reduce-overhead,step_graph', 'fast,compile=reduce-overhead,step_graph,stacked'])
@on_gpu
def test_fused_gpu_paths(gpu_teacher, tmp_path, speed):
    "Fused students on the GPU, with CUDA graphs: one teacher pass feeding a logit method and a feature method (whose student's hooks come after a hookless student of its class was compiled), each written to its own folder."
    run_kdnb('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', gpu_teacher, '--student', 'ResNet-8', '--method', 'KD,AT',
             '--speed', speed, '--precision', 'bf16', '--out', tmp_path, *GPU_RUN, check=True, timeout=900)
    for m in ('KD', 'AT'): assert json.loads((tmp_path/m/'results.json').read_text())['config']['method'] == m

class CudaSyncs:
    "CUDA's own count of the operations that wait for the GPU (`torch.cuda.set_sync_debug_mode`): what `HostReads` cannot see too."
    def __enter__(self):
        import warnings
        self._caught = warnings.catch_warnings(record=True); self.log = self._caught.__enter__(); warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn'); return self
    def __exit__(self, *exc): torch.cuda.set_sync_debug_mode(0); self._caught.__exit__(*exc)
    @property
    def n(self): return sum('synchroniz' in str(w.message) for w in self.log)

def _waits_per_epoch(methods, n_train, device, counter) -> int:
    "How often one epoch of `methods` (one student each, fused if several) over `n_train` training images and half as many validation images waits for the device."
    from kdnb.core import scratch_dir
    from kdnb.data import read_cifar10_subset, ImageArrayDataset, CIFAR10_STATS
    from kdnb.fast import array_dataloaders
    from kdnb.models.core import create_model
    from kdnb.distill import distill_learner, make_method, DistillationModel
    from kdnb.fused import fused_learner
    from kdnb.config import Recipe
    from fastai.torch_core import set_seed
    sub = read_cifar10_subset(True)
    def first(n): return ImageArrayDataset(sub.images[:n], sub.labels[:n], sub.classes)
    set_seed(0)
    dls = array_dataloaders(first(n_train), first(n_train // 2), CIFAR10_STATS, bs=16, valid_bs=16, device=device, seed=0)
    teacher, recipe = create_model('ResNet-8', 10).eval().to(device), Recipe(epochs=1, milestones=(5,))
    made = [make_method(m, 'ResNet-8', 'WRN-16-1', **({'nce_k': 32} if m == 'CRD' else {}))[0] for m in methods]
    if len(made) == 1: learn, lr = distill_learner(dls, create_model('WRN-16-1', 10), teacher, made[0], recipe, scratch_dir())
    else:
        for m in made: m.attach_data(dls.train.dataset)
        learn, lr = fused_learner(dls, [DistillationModel(create_model('WRN-16-1', 10), teacher, m) for m in made], teacher, recipe, scratch_dir()), recipe.lr
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, lr=lr)  # the first epoch moves the models and makes their state
        with counter() as c: learn.fit(1, lr=lr)
    return c.n

@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=[pytest.mark.gpu, pytest.mark.skipif(not has_cuda(), reason='needs a CUDA GPU')])])
def test_no_batch_waits_for_the_gpu(device):
    "A GPU runs a step while the host queues the next only if nothing waits for it in between: no method's training or validation batch does, nor a fused one's (an epoch of 4 + 2 batches waits as often as one of 2 + 1), but training batches of the methods that say why (`Method.gpu_sync`). On a CPU, the reads of `HostReads`; on a GPU, every wait CUDA sees."
    from kdnb.fast import HostReads
    from kdnb.methods import list_methods, create_method
    counter = HostReads if device == 'cpu' else CudaSyncs
    groups = [[m] for m in list_methods() if device == 'cpu' or not create_method(m).gpu_sync] + [['KD', 'FitNet', 'AT', 'DIST', 'SRD', 'CRD']]
    # a wait in every batch makes 2 more in the longer epoch; CUDA's count may differ by one wait from run to run (allocator, cuDNN)
    slack = 0 if device == 'cpu' else 1
    per_batch = {'+'.join(g): (a, b) for g in groups if abs((a := _waits_per_epoch(g, 32, device, counter)) - (b := _waits_per_epoch(g, 64, device, counter))) > slack}
    assert not per_batch, f"waits in an epoch of 2 + 1 and of 4 + 2 training + validation batches: {per_batch}"

@on_gpu
def test_fused_students_on_streams_and_stacked():
    "Speed options `streams` and `stacked`: fused students, each on a CUDA stream of its own (`MemberStreams`) or as one network (`StudentStack`), train as they do one after another on one stream."
    from kdnb.core import scratch_dir
    from kdnb.fast import array_dataloaders, parse_speed
    from kdnb.data import read_cifar10_subset, ImageArrayDataset, CIFAR10_STATS
    from kdnb.models.core import create_model
    from kdnb.distill import make_method, DistillationModel
    from kdnb.fused import fused_learner, MemberStreams
    from kdnb.config import Recipe
    from fastai.torch_core import set_seed
    sub = read_cifar10_subset(True)
    def first(n): return ImageArrayDataset(sub.images[:n], sub.labels[:n], sub.classes)
    def train(speed):
        set_seed(0)
        dls = array_dataloaders(first(96), first(32), CIFAR10_STATS, bs=32, device='cuda', seed=0)
        teacher, recipe = create_model('ResNet-8', 10).eval().cuda(), Recipe(epochs=1, milestones=(5,))
        members = [DistillationModel(create_model('ResNet-8', 10), teacher, make_method(m, 'ResNet-8', 'ResNet-8')[0]) for m in ('KD', 'AT', 'DIST')]
        start = [torch.cat([p.detach().flatten() for p in m.student.parameters()]) for m in members]
        learn = fused_learner(dls, members, teacher, recipe, scratch_dir(), speed=parse_speed(speed, 'cuda'))
        with learn.no_bar(), learn.no_logging(): learn.fit(1, lr=recipe.lr)
        return learn, start
    deterministic, tf32 = torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32
    # cuDNN's own run-to-run differences aside, and fp32 sums: TF32's 10-bit products would round grouped convolutions otherwise
    torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = True, False
    try: (one, start), (each, _), (stacked, _) = (train(f'off,device_data{o}') for o in ('', ',streams', ',stacked'))
    finally: torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = deterministic, tf32
    assert isinstance(each.model.threads, MemberStreams) and not isinstance(one.model.threads, MemberStreams) and stacked.model.stack is not None
    for a, b in zip(one.model.members, each.model.members):
        for p, q in zip(a.student.parameters(), b.student.parameters()): assert torch.allclose(p, q, atol=1e-5), (p - q).abs().max()
    # stacked, the convolutions are grouped ones, which sum in another order: the same training, to 2% of the weights' move
    # (DIST's correlations of nearly flat distributions magnify rounding)
    for a, b, w0 in zip(one.model.members, stacked.model.members, start):
        wa, wb = (torch.cat([p.detach().flatten() for p in m.student.parameters()]) for m in (a, b))
        assert (wa - wb).norm() < 0.02 * (wa - w0.to(wa.device)).norm(), ((wa - wb).norm(), (wa - w0.to(wa.device)).norm())

def test_overlap_bench_needs_cuda(kdnb_main):
    one_line_error(kdnb_main('bench', '--overlap', '--device', 'cpu'), 'it needs a CUDA GPU', '--device cuda')
    one_line_error(kdnb_main('bench', '--students', '3'), '--students goes with --overlap')

@on_gpu
def test_overlap_bench_on_the_gpu():
    "Students one after another, on streams of their own and stacked, each step one CUDA graph: every variant timed, and the ratios printed."
    r = run_kdnb('bench', '--overlap', '--pair', 'ResNet-8:ResNet-8', '--students', '2', '--steps', '5', '--rounds', '2', check=True)
    lines = r.stdout.strip().splitlines()
    assert [l.split('  ')[0].strip() for l in lines[1:5]] == ['one KD run', '2 students, one stream', '2 students, a stream each', '2 students stacked (vmap)'], r.stdout
    assert lines[5].startswith('the fused step takes, in units of one KD run') and 'x stacked' in lines[5], r.stdout
    for how, line in zip(('a stream each', 'stacked'), lines[-2:]):
        assert re.fullmatch(how + r': the students train \d+\.\d\dx faster than one after another \(median of 2 rounds; range \d+\.\d\d-\d+\.\d\d\)', line), r.stdout
