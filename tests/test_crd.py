"The CRD/DKD CIFAR-100 benchmark: its models, the peers' (RepDistiller/mdistiller) checkpoints, the kdnb distill path and grids/crd.yaml."
import pytest, torch
from conftest import ROOT, run_main
from kdnb.models.core import create_model, count_parameters

PEERS = ROOT.parent/'shared'/'fixtures'/'peer-checkpoints'
needs_fixtures = pytest.mark.skipif(not PEERS.is_dir(), reason=f'{PEERS} (the peer-checkpoint fixtures of ../shared) is absent')
FIXTURES = ['resnet8x4', 'wrn_16_2', 'vgg8', 'ShuffleV1', 'ShuffleV2', 'MobileNetV2', 'resnet20']

def one_line_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('kdnb: error: '), r.stderr
    for n in needles: assert n in lines[0], lines[0]

def rel_error(got, want): return ((got - want).norm() / want.norm()).item()

def test_param_counts_equal_the_peers():
    published = {'resnet8x4': 1.23, 'resnet32x4': 7.43, 'vgg8': 3.97, 'vgg13': 9.46, 'ShuffleV1': 0.95, 'ShuffleV2': 1.36,
                 'crd:MobileNetV2': 0.81, 'ResNet50': 23.71, 'wrn_40_2': 2.26, 'wrn_16_2': 0.70, 'wrn_40_1': 0.57,
                 'resnet56': 0.86, 'resnet110': 1.74, 'resnet20': 0.28, 'resnet32': 0.47}
    for name, m in published.items():
        assert abs(count_parameters(create_model(name, num_classes=100)) / 1e6 - m) < 0.006, name

@needs_fixtures
@pytest.mark.parametrize('peer', FIXTURES)
def test_peer_checkpoint_logits(peer):
    exp = torch.load(PEERS/f'{peer}_expected.pt')
    name = 'crd:MobileNetV2' if peer == 'MobileNetV2' else peer  # plain 'MobileNetV2' is kdnb's full-width network
    m = create_model(name, num_classes=100, checkpoint_path=PEERS/f'{peer}_best.pth').eval()
    with torch.no_grad(): assert rel_error(m(exp['x']), exp['logits']) < 1e-3

@pytest.fixture(scope='module')
def cifar100(tmp_path_factory):
    from kdnb.data import write_fake_cifar100
    return write_fake_cifar100(tmp_path_factory.mktemp('c100'), 32, 16).parent

@needs_fixtures
def test_distill_cli_with_a_peer_teacher(tmp_path, cifar100, monkeypatch):
    "`kdnb distill --teacher resnet8x4 --teacher-ckpt <RepDistiller file>` loads the peers' teacher: its logits are theirs."
    import kdnb.distill
    made, create = [], kdnb.distill.create_model
    def spy(*a, **k):
        made.append(create(*a, **k)); return made[-1]
    monkeypatch.setattr(kdnb.distill, 'create_model', spy)
    run_main('distill', '--teacher', 'resnet8x4', '--teacher-ckpt', PEERS/'resnet8x4_best.pth', '--student', 'ShuffleV1',
             '--method', 'KD', '--dataset', 'CIFAR-100', '--data-root', cifar100, '--epochs', '1', '--max-items', 16, '--bs', 16,
             '--device', 'cpu', '--speed', 'off', '--out', tmp_path/'run', '--no-progress', check=True)
    teacher = next(m for m in made if m.name == 'ResNet-8x4')
    exp = torch.load(PEERS/'resnet8x4_expected.pt')
    with torch.no_grad(): assert rel_error(teacher.eval().cpu().float()(exp['x']), exp['logits']) < 1e-3
    assert (tmp_path/'run'/'results.json').exists()

@needs_fixtures
def test_mismatched_peer_checkpoints(tmp_path, cifar100):
    base = ['distill', '--student', 'resnet8x4', '--dataset', 'CIFAR-100', '--data-root', cifar100, '--epochs', '1',
            '--max-items', 16, '--bs', 16, '--no-progress']
    one_line_error(run_main(*base, '--teacher', 'resnet32x4', '--teacher-ckpt', PEERS/'vgg8_best.pth', '--out', tmp_path/'a'),
                   "holds the weights of VGG-8 (RepDistiller/mdistiller's 'vgg8') with 100 classes", 'do not fit ResNet-32x4 with 100 classes')
    one_line_error(run_main(*base, '--teacher', 'MobileNetV2', '--teacher-ckpt', PEERS/'MobileNetV2_best.pth', '--out', tmp_path/'b'),
                   'MobileNetV2-x0.5', 'do not fit MobileNetV2 with 100 classes', 'crd:MobileNetV2')
    with pytest.raises(Exception, match='saved for WRN-16-2 with 100 classes, but this model has 10'):
        create_model('WRN-16-2', num_classes=10, checkpoint_path=PEERS/'wrn_16_2_best.pth')
    for d in 'ab': assert not (tmp_path/d/'last.pt').exists()

def test_crd_grid_dry_run(tmp_path, cifar100):
    "grids/crd.yaml: both tables x every method, each cell with its teacher source and the CRD recipe."
    spec = ROOT/'grids'/'crd.yaml'
    teachers = tmp_path/'cifar_teachers'
    (teachers/'resnet32x4_vanilla').mkdir(parents=True); (teachers/'resnet32x4_vanilla'/'ckpt_epoch_240.pth').write_bytes(b'')
    out = run_main('grid', 'run', spec, '--out', tmp_path/'run', '--dry-run', '--teachers', teachers, check=True).stdout
    from kdnb.grid import load_plan
    from kdnb.methods import list_methods
    methods, same_width = set(list_methods()) - {'CE'}, {'FSP', 'KDSVD'}  # CE is the Student row
    n = 13 * len(methods - same_width) + 6 * len(same_width)  # 7 + 6 pairs; the same-width methods on 6 of the 7 same-type pairs
    assert f'grids/crd.yaml: {n + 9} cells (9 from scratch, {n} distillation)' in out.replace(str(ROOT) + '/', '')
    lines = out.splitlines()
    def line(cell_id): return lines[next(i for i, l in enumerate(lines) if l.endswith(cell_id)) + 1]
    assert line('CIFAR-100/distill/ResNet-32x4_ResNet-8x4/KD/s0').endswith(
        f"KD(alpha=0.9, T=4.0) ResNet-32x4 -> ResNet-8x4; 240 ep, bs 64, lr 0.05 (x0.1 at 150/180/210), fp32; teacher: checkpoint {teachers}/resnet32x4_vanilla/ckpt_epoch_240.pth")
    assert line('CIFAR-100/distill/VGG-13_MobileNetV2-x0.5/DIST/s0').endswith(f"lr 0.01 (x0.1 at 150/180/210), fp32; teacher: checkpoint {teachers}/vgg13_vanilla/ckpt_epoch_240.pth (not found)")
    assert line('CIFAR-100/train/ResNet-20/s0') == '        train ResNet-20; 240 ep, bs 64, lr 0.05 (x0.1 at 150/180/210), fp32'
    assert 'teacher: a peer trained alongside' in line('CIFAR-100/distill/ResNet-50_VGG-8/DML/s0')
    cc = next(l for i, l in enumerate(lines[1:]) if '/distill/VGG-13_VGG-8/CC' in lines[i])  # RepDistiller's CC, with its weight
    assert cc.strip().startswith('CC(beta=0.02,') and 'formula=repdistiller)' in cc, cc
    plan = load_plan(spec, teachers)
    assert {e.experiment for e in plan.entries} == {'crd_same', 'crd_cross', 'crd_same_width'}
    got = {c.method for c in plan.cells if c.kind == 'distill'}
    assert got == methods, f"grids/crd.yaml runs every kdnb method: add {methods - got} to its `methods`" 
    assert all(c.teacher_ckpt for c in plan.cells if c.kind == 'distill' and c.method != 'DML') and all(c.kind != 'train' or c.model in
           ('WRN-16-2', 'WRN-40-1', 'ResNet-20', 'ResNet-32', 'ResNet-8x4', 'VGG-8', 'MobileNetV2-x0.5', 'ShuffleNetV1', 'ShuffleNetV2') for c in plan.cells)
    assert next(e for e in plan.entries if e.column == 'ResNet-32x4 -> ShuffleNetV2' and e.row == 'KD').reference == 74.45
    scratch = run_main('grid', 'run', spec, '--out', tmp_path/'run2', '--dry-run', check=True).stdout  # no --teachers: trained first
    assert f'{n + 15} cells (15 from scratch, {n} distillation)' in scratch and 'teacher: cell CIFAR-100/train/ResNet-32x4/s0' in scratch
    one_line_error(run_main('grid', 'run', spec, '--out', tmp_path/'run3', '--teachers', teachers, '--data-root', cifar100), 'not found', 'vgg13_vanilla')

@pytest.mark.parametrize('teacher,student', [('VGG-13', 'VGG-8'), ('ResNet-32x4', 'ShuffleNetV2'), ('ResNet-50', 'MobileNetV2-x0.5'), ('WRN-40-2', 'ShuffleNetV1')])
def test_feature_methods_on_crd_pairs(teacher, student):
    "The new networks' feature specs serve the feature methods: one finite loss and a gradient for AT and SRD."
    import torch.nn.functional as F
    from kdnb.models.core import FeatureHooks
    from kdnb.distill import DistillationModel, create_method
    t, s, x, y = create_model(teacher).eval(), create_model(student), torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    for name in ('AT', 'SRD'):
        m = create_method(name); dm = DistillationModel(s, t, m)
        with FeatureHooks(s) as hs, FeatureHooks(t, detach=True) as ht:
            logits = dm(x)
            with torch.no_grad(): tl = t(x)
            loss = sum(m(hs.features(logits), ht.features(tl), y, F.cross_entropy(logits, y)).values())
        loss.backward()
        assert torch.isfinite(loss) and any(p.grad is not None for p in s.parameters())

def test_crd_runs_number_the_maps_as_repdistiller(tmp_path):
    "A feature method of the CRD benchmark reads the maps as RepDistiller numbered them (a WRN's raw third stage) and records it; a run recorded without it is another run."
    import json
    from kdnb.core import KdnbError
    from kdnb.distill import distill_model
    cfg = dict(model='WRN-16-1', teacher='WRN-16-2', method='SP', benchmark='crd', epochs=1, max_items=32, bs=16, device='cpu', speed='off', progress=False)
    rec = distill_model(out=tmp_path/'sp', **cfg)['config']
    assert rec['last_map'] == 'stage' and rec['padding'] == 'constant'
    assert distill_model(out=tmp_path/'kd', **{**cfg, 'method': 'KD'})['config']['last_map'] == 'final'  # it reads no maps
    assert distill_model(out=tmp_path/'ref', **{**cfg, 'benchmark': 'reference'})['config']['last_map'] == 'final'
    config = tmp_path/'sp'/'config.json'
    old = json.loads(config.read_text()); del old['last_map']; config.write_text(json.dumps(old))  # as kdnb recorded it before
    (tmp_path/'sp'/'results.json').unlink()  # such a run numbered its maps up to the last before pooling
    with pytest.raises(KdnbError, match=r"holds another run \(last_map: 'final' there, 'stage' here\)"): distill_model(out=tmp_path/'sp', resume=True, **cfg)

def test_crd_crops_pad_with_zeros():
    "The CRD tables' code pads training crops with zeros (torchvision's RandomCrop(32, padding=4)); the reference by reflection. Both pipelines follow."
    from kdnb.config import RunConfig
    from kdnb.train import make_run_dataloaders
    from kdnb.fast import parse_speed
    def loaders(benchmark, speed): return make_run_dataloaders(RunConfig('WRN-16-1', benchmark=benchmark, max_items=32), 'cpu', parse_speed(speed, 'cpu'))
    assert [loaders(b, 'off').train.dataset.ds.transform.transforms[0].padding_mode for b in ('crd', 'reference')] == ['constant', 'reflect']
    dev = loaders('crd', 'off,device_data').train
    assert dev.padding == 'constant' and dev.padded[:, :, :4].max() == 0
