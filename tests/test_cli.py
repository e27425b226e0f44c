"The `kdnb` command: listings, and one clear error (exit 2, one line) for each kind of bad input."
import json, pickle
from pathlib import Path
import pytest, torch
from kdnb.data import write_fake_cifar100
from conftest import ROOT

def one_line_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('kdnb: error: '), r.stderr
    for n in needles: assert n in lines[0], lines[0]

def test_listings(kdnb_main):
    out = kdnb_main('models', check=True).stdout
    for name in ['WRN-16-1', 'WRN-40-4', 'ResNet-8', 'ResNet-110', 'ResNet-18', 'ResNet-50', 'MobileNetV2', 'MobileNetV2-x0.5', 'GhostNet']:
        assert name in out
    assert '8.97M' in out and '11.22M' in out
    methods = kdnb_main('methods', check=True).stdout
    for m in ['KD', 'FitNet', 'AT', 'DML', 'DIST', 'SRD', 'SRDwithDIST', 'SRDwithKL', 'SRDwithPMSE']: assert f'\n{m} ' in '\n' + methods
    assert 'CIFAR-100' in kdnb_main('datasets', check=True).stdout

def test_unknown_names(kdnb_cli, kdnb_main, tmp_path):
    "The installed command prints one line and exits 2; the other cases run its code in-process."
    one_line_error(kdnb_cli('train', '--model', 'WRN-99-9', '--out', tmp_path/'a'), "unknown model 'WRN-99-9'", 'WRN-40-4')
    one_line_error(kdnb_main('train', '--model', 'WRN-16-1', '--dataset', 'mnist', '--out', tmp_path/'b'), "unknown dataset 'mnist'", 'CIFAR-100')
    one_line_error(kdnb_main('distill', '--teacher', 'WRN-16-2', '--student', 'WRN-16-1', '--method', 'NoSuchKD', '--out', tmp_path/'c'),
                   "unknown method 'NoSuchKD'", 'SRDwithDIST')
    one_line_error(kdnb_main('distill', '--teacher', 'WRN-16-2', '--student', 'WRN-16-1', '--method', 'KD', '--tau', '2', '--out', tmp_path/'d'),
                   "has no hyper-parameter 'tau'")

def test_missing_cifar100_without_network(kdnb_main, tmp_path):
    one_line_error(kdnb_main('train', '--model', 'ResNet-8', '--dataset', 'CIFAR-100', '--data-root', tmp_path, '--out', tmp_path/'r'),
                   'CIFAR-100'.lower().replace('-', ''), '--download')

def test_train_on_official_cifar100_layout(kdnb_main, tmp_path):
    write_fake_cifar100(tmp_path/'data', n_train=64, n_test=16)
    r = kdnb_main('train', '--model', 'ResNet-8', '--dataset', 'CIFAR-100', '--data-root', tmp_path/'data', '--epochs', '1',
                 '--bs', '16', '--out', tmp_path/'run', '--no-progress', check=True)
    res = json.loads((tmp_path/'run'/'results.json').read_text())
    assert res['config']['num_classes'] == 100 and res['epochs'] == 1
    assert 'results.json' in r.stdout

SMALL = ['--max-items', '512']  # what the runs below check does not need the whole subset

@pytest.fixture(scope='module')
def small_teacher(tmp_path_factory):
    "A ResNet-8 trained for one epoch on 512 images of the embedded subset (`SMALL`)."
    out = tmp_path_factory.mktemp('teacher')/'run'
    from conftest import run_kdnb
    run_kdnb('train', '--model', 'ResNet-8', '--epochs', '1', *SMALL, '--out', out, '--no-progress', check=True)
    return out

def test_bad_teacher_checkpoints(kdnb_main, tmp_path, small_teacher):
    ck = small_teacher/'last.pt'
    base = ['distill', '--student', 'WRN-16-1', '--method', 'KD', '--epochs', '1', '--no-progress']
    one_line_error(kdnb_main(*base, '--teacher', 'WRN-16-2', '--teacher-ckpt', ck, '--out', tmp_path/'a'), 'ResNet-8', 'do not fit')
    one_line_error(kdnb_main(*base, '--teacher', 'ResNet-8', '--teacher-ckpt', ck, '--dataset', 'CIFAR-100', '--out', tmp_path/'b',
                            '--data-root', write_fake_cifar100(tmp_path/'d', 64, 16).parent, '--bs', '16'), 'with 10 classes', 'has 100')
    bad = tmp_path/'trunc.pt'; bad.write_bytes(ck.read_bytes()[:2000])
    one_line_error(kdnb_main(*base, '--teacher', 'ResNet-8', '--teacher-ckpt', bad, '--out', tmp_path/'c'), 'corrupt or truncated')
    for d in 'abc': assert not (tmp_path/d/'last.pt').exists()  # nothing trained

def test_out_dir_of_another_run_is_untouched(kdnb_main, tmp_path, small_teacher):
    before = {p.name: p.read_bytes() for p in small_teacher.iterdir() if p.is_file()}
    one_line_error(kdnb_main('train', '--model', 'ResNet-14', '--epochs', '1', '--out', small_teacher), 'holds another run', 'new --out')
    one_line_error(kdnb_main('train', '--model', 'ResNet-8', '--epochs', '1', *SMALL, '--out', small_teacher), 'pass --resume')
    assert {p.name: p.read_bytes() for p in small_teacher.iterdir() if p.is_file()} == before

def test_distill_from_checkpoint(kdnb_main, tmp_path, small_teacher):
    r = kdnb_main('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', small_teacher/'last.pt', '--student', 'ResNet-8',
                 '--method', 'DIST', '--epochs', '1', *SMALL, '--out', tmp_path/'kd', '--no-progress', check=True)
    res = json.loads((tmp_path/'kd'/'results.json').read_text())
    assert res['config']['hparams'] == {'alpha': 1.0, 'beta': 2.0, 'gamma': 2.0, 'tau': 4.0}
    hist = (tmp_path/'kd'/'history.csv').read_text().splitlines()[0].split(',')
    assert {'ce', 'inter', 'intra', 'top1', 'top5', 'valid_loss'} <= set(hist)

def test_fitnet_two_stage(kdnb_main, tmp_path, small_teacher):
    kdnb_main('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', small_teacher/'last.pt', '--student', 'ResNet-8', '--method', 'FitNet',
             '--hint-epochs', '1', '--epochs', '1', *SMALL, '--out', tmp_path/'fit', '--no-progress', check=True)
    hint = json.loads((tmp_path/'fit'/'hint'/'results.json').read_text())
    assert hint['config']['stage'] == 'hint' and 'hint' in (tmp_path/'fit'/'hint'/'history.csv').read_text().splitlines()[0]
    assert json.loads((tmp_path/'fit'/'results.json').read_text())['config']['hparams']['hint_epochs'] == 1
    assert 'hint' not in (tmp_path/'fit'/'history.csv').read_text().splitlines()[0].split(',')  # stage two is plain KD

def test_precomputed_logits_with_device_data(kdnb_main, tmp_path, small_teacher):
    "The consistency ablation on the GPU pipeline: pre-computed logits come from the device loader's own augmented views."
    kdnb_main('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', small_teacher/'last.pt', '--student', 'ResNet-8', '--method', 'KD',
              '--teacher-logits', 'precomputed', '--speed', 'off,device_data', '--epochs', '1', '--max-items', '64', '--bs', '16',
              '--out', tmp_path/'pre', '--no-progress', check=True)
    cfg = json.loads((tmp_path/'pre'/'results.json').read_text())['config']
    assert (cfg['teacher_logits'], cfg['speed'], cfg['precision']) == ('precomputed', 'device_data', 'fp32')

def test_precomputed_logits_only_for_logit_methods(kdnb_main, tmp_path, small_teacher):
    r = kdnb_main('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', small_teacher/'last.pt', '--student', 'ResNet-8', '--method', 'AT',
                 '--teacher-logits', 'precomputed', '--epochs', '1', '--out', tmp_path/'at')
    one_line_error(r, 'AT cannot use pre-computed teacher logits')

def readme_method_example() -> str:
    "The code of README's 'Add a method' section."
    readme = (ROOT/'README.md').read_text()
    section = readme.split('## Add a method', 1)[1]
    return section.split('```python\n', 1)[1].split('```', 1)[0]

def test_method_plugin_from_readme(kdnb_cli, kdnb_main, tmp_path, small_teacher):
    "README's example method, installed as a plugin (an entry point in group kdnb.methods), works from the command line."
    site = tmp_path/'site'; site.mkdir()
    (site/'mykd.py').write_text(readme_method_example())
    info = site/'mykd-0.1.dist-info'; info.mkdir()
    (info/'METADATA').write_text('Metadata-Version: 2.1\nName: mykd\nVersion: 0.1\n')
    (info/'entry_points.txt').write_text('[kdnb.methods]\nmykd = mykd\n')
    env = {'PYTHONPATH': str(site)}
    assert '\nMyKD ' in '\n' + kdnb_cli('methods', env=env, check=True).stdout
    kdnb_cli('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', small_teacher/'last.pt', '--student', 'ResNet-8', '--method', 'mykd',
             '--T', '3', '--hp', 'mix=0.7', '--epochs', '1', '--out', tmp_path/'run', '--no-progress', env=env, check=True)
    res = json.loads((tmp_path/'run'/'results.json').read_text())
    assert res['config']['method'] == 'MyKD' and res['config']['hparams'] == {'mix': 0.7, 'T': 3.0}  # its own hyper-parameter, by --hp
    (tmp_path/'g.yaml').write_text('epochs: 1\nexperiments:\n  a:\n    pairs: [ResNet-8 -> ResNet-8]\n    methods: [MyKD]\n    hparams: {MyKD: {mix: 0.7}}\n')
    plan = kdnb_cli('grid', 'run', tmp_path/'g.yaml', '--out', tmp_path/'g', '--dry-run', env=env, check=True).stdout
    assert 'MyKD(mix=0.7, T=2.0) ResNet-8 -> ResNet-8' in plan, plan  # and by a grid spec
    assert {'ce', 'kd'} <= set((tmp_path/'run'/'history.csv').read_text().splitlines()[0].split(','))
    one_line_error(kdnb_main('distill', '--teacher', 'ResNet-8', '--student', 'ResNet-8', '--method', 'MyKD', '--out', tmp_path/'x'),
                   "unknown method 'MyKD'")  # without the plugin installed

def test_demo_shows_student_alone_and_with_kd(kdnb_cli, tmp_path):
    "`make demo`'s command, one epoch each on the first 1,024 images: teacher, student alone, student with KD side by side, their curves, one line per epoch in a log."
    r = kdnb_cli('demo', '--out', tmp_path/'demo', '--teacher-epochs', '1', '--student-epochs', '1', '--max-items', '1024', check=True)
    assert '\r' not in r.stdout and sum(l.startswith('epoch 0  train_loss') for l in r.stdout.splitlines()) == 3, r.stdout
    for label in ['teacher WRN-16-2', 'student WRN-16-1 alone', 'student WRN-16-1 with KD', 'KD gain over the student alone']:
        assert label in r.stdout, r.stdout
    alone, kd = (json.loads((tmp_path/'demo'/d/'results.json').read_text())['config'] for d in ('student-alone', 'student-kd'))
    assert (alone['model'], alone['seed'], alone['epochs'], alone['max_items']) == (kd['model'], kd['seed'], kd['epochs'], kd['max_items']) == ('WRN-16-1', 0, 1, 1024)
    assert (tmp_path/'demo'/'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

def test_fused_distill_and_generic_hparams(kdnb_main, tmp_path):
    "`--method A,B` trains one student per method in one fused run, each into --out/METHOD; `--hp NAME=VALUE` reaches any hyper-parameter."
    common = ['--teacher', 'ResNet-8', '--student', 'ResNet-8', '--epochs', '1', '--max-items', '32', '--bs', '16', '--device', 'cpu', '--no-progress']
    r = kdnb_main('distill', *common, '--method', 'KD,AT', '--T', '2', '--hp', 'beta=500', '--out', tmp_path/'f', check=True)
    res = {m: json.loads((tmp_path/'f'/m/'results.json').read_text()) for m in ('KD', 'AT')}
    assert res['KD']['config']['hparams']['T'] == 2 and res['AT']['config']['hparams'] == {'alpha': 0.9, 'T': 2, 'beta': 500, 'p': 2.0}
    assert res['KD']['fused_with'] == ['AT'] and 'KD ' in r.stdout and 'AT ' in r.stdout
    one_line_error(kdnb_main('distill', *common, '--method', 'KD,DML', '--out', tmp_path/'x'), 'DML cannot join fused students: it trains its teacher as a peer', 'run it alone')
    one_line_error(kdnb_main('distill', *common, '--method', 'KD,DIST', '--hint-epochs', '2', '--out', tmp_path/'x'), "takes the hyper-parameter 'hint_epochs'")
    one_line_error(kdnb_main('distill', *common, '--method', 'DOT', '--hp', 'delta=0.5', '--out', tmp_path/'x'), "DOT's delta must be in [0, 0.1)")
    one_line_error(kdnb_main('distill', *common, '--method', 'DOT', '--hp', 'gamma=1', '--out', tmp_path/'x'), "method DOT has no hyper-parameter 'gamma'")
    one_line_error(kdnb_main('distill', *common, '--method', 'DOT', '--hp', 'delta', '--out', tmp_path/'x'), "'delta' is not NAME=VALUE")
    assert not (tmp_path/'x').exists()  # refused before anything is written

def test_public_api():
    "The zoo and the methods at the package's top level, loaded on first use (`import kdnb` imports neither torch nor fastai)."
    import subprocess, sys
    r = subprocess.run([sys.executable, '-c', "import sys, kdnb; assert 'torch' not in sys.modules; print(kdnb.list_models('WRN-40*'))"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'WRN-40-4' in r.stdout, r.stderr
    import kdnb
    from kdnb.models import create_model, list_models
    assert kdnb.create_model is create_model and kdnb.list_models() == list_models() and 'DOT' in kdnb.list_methods()
    with pytest.raises(AttributeError): kdnb.no_such_thing
