"""ImageNet at test size: a tiny JPEG tree, as class folders and as list files, trains and distils end to end with
torchvision's and kdnb's ImageNet networks; the ImageNet grid's dry run; and one clear error for each way the data or
a teacher can be wrong (nothing is downloaded: published weights come from PyTorch's hub cache or not at all)."""
import json, shutil
import numpy as np, pytest
from PIL import Image
from conftest import run_kdnb, run_main, ROOT
from test_cli import one_line_error

CLASSES = ['n01440764', 'n01443537', 'n01484850']

@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (6 and 2 per class, of several sizes), and train.txt / val.txt listing them."
    root, rng = tmp_path_factory.mktemp('imagenet'), np.random.default_rng(0)
    for split, n in (('train', 6), ('val', 2)):
        lines = []
        for label, c in enumerate(CLASSES):
            (root/split/c).mkdir(parents=True)
            for i in range(n):
                name = f'{c}_{i}.JPEG'
                Image.fromarray(rng.integers(0, 256, (48 + 16 * i, 64, 3), dtype=np.uint8)).save(root/split/c/name, 'JPEG')
                lines.append(f'{split}/{c}/{name} {label}')
        (root/f'{split}.txt').write_text('\n'.join(lines) + '\n')
    return root

def test_train_and_distill_both_layouts(tree, tmp_path):
    common = ['--data-root', tree, '--epochs', '1', '--bs', '6', '--device', 'cpu', '--no-progress', '--benchmark', 'imagenet']
    run_main('train', '--model', 'torchvision:resnet18', '--dataset', 'image-folder', '--out', tmp_path/'t', *common, check=True)
    res = json.loads((tmp_path/'t'/'results.json').read_text())
    assert (res['config']['model'], res['config']['num_classes'], res['config']['lr'], res['config']['wd']) == ('torchvision:resnet18', 3, 0.1, 1e-4)
    # the reference's layout (list files), a feature method with kdnb's MobileNetV1 student: both in one fused run
    run_main('distill', '--teacher', 'torchvision:resnet18', '--teacher-ckpt', tmp_path/'t'/'last.pt', '--student', 'MobileNetV1',
             '--method', 'KD,AT', '--dataset', 'image-lists', '--out', tmp_path/'s', *common, check=True)
    for m in ('KD', 'AT'):
        res = json.loads((tmp_path/'s'/m/'results.json').read_text())
        assert res['config']['model'] == 'MobileNetV1' and res['config']['dataset'] == 'image-lists' and 0 <= res['last']['top1'] <= 1
    # a teacher whose classes do not match the data
    one_line_error(run_main('distill', '--teacher', 'torchvision:resnet18', '--teacher-ckpt', tmp_path/'t'/'last.pt', '--student', 'ResNet-8',
                            '--out', tmp_path/'x', '--epochs', '1', '--max-items', '16', '--device', 'cpu'), '3', '10')

def test_bad_trees_and_lists(tree, tmp_path):
    args = ['--epochs', '1', '--bs', '2', '--device', 'cpu', '--out', tmp_path/'x']
    one_line_error(run_main('train', '--model', 'MobileNetV1', '--dataset', 'image-folder', '--data-root', tmp_path, *args),
                   f'{tmp_path}/train is not a folder', 'train/<class>/')
    bad = tmp_path/'bad'; shutil.copytree(tree, bad)
    (bad/'val.txt').write_text(f'val/{CLASSES[0]}/missing.JPEG 0\n')
    one_line_error(run_main('train', '--model', 'MobileNetV1', '--dataset', 'image-lists', '--data-root', bad, *args),
                   f'names {bad}/val/{CLASSES[0]}/missing.JPEG, which does not exist')
    shutil.rmtree(bad/'val'/CLASSES[2])
    one_line_error(run_main('train', '--model', 'MobileNetV1', '--dataset', 'image-folder', '--data-root', bad, *args),
                   'has 3 classes but the validation split', '2')
    one_line_error(run_main('train', '--model', 'MobileNetV1', '--dataset', 'ImageNet', '--data-root', tree, *args),
                   'ImageNet has 1000 classes', 'holds 3', 'image-folder')
    assert not (tmp_path/'x').exists()

def test_published_weights_never_downloaded_unasked(tree, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))  # an empty hub cache: any weights asked for would have to be downloaded
    r = run_main('distill', '--teacher', 'torchvision:resnet18', '--teacher-weights', 'DEFAULT', '--student', 'MobileNetV1', '--dataset', 'ImageNet-lists',
                 '--data-root', tree, '--out', tmp_path/'x', '--epochs', '1', '--device', 'cpu')
    one_line_error(r, 'ImageNet-lists has 1000 classes')  # the data is checked first
    r = run_main('distill', '--teacher', 'torchvision:resnet18', '--teacher-weights', 'DEFAULT', '--student', 'MobileNetV1', '--dataset', 'image-lists',
                 '--data-root', tree, '--out', tmp_path/'x', '--epochs', '1', '--device', 'cpu')
    one_line_error(r, 'weights IMAGENET1K_V1 classify 1000 classes, but the data has 3')
    one_line_error(run_main('distill', '--teacher', 'torchvision:resnet19', '--student', 'MobileNetV1', '--out', tmp_path/'x'),
                   "torchvision has no classifier 'resnet19'")
    # the ImageNet grid refuses to start without its teachers' weights, naming the file to place
    r = run_main('grid', 'run', ROOT/'grids'/'imagenet.yaml', '--out', tmp_path/'g', '--data-root', tree)
    one_line_error(r, "torchvision's resnet34 weights IMAGENET1K_V1 are not in", 'resnet34-')
    assert not (tmp_path/'g').exists()

def test_imagenet_grid_dry_run(tmp_path):
    out = run_main('grid', 'run', ROOT/'grids'/'imagenet.yaml', '--out', tmp_path/'g', '--dry-run', check=True).stdout
    assert 'grids/imagenet.yaml: 14 cells (2 from scratch, 12 distillation)' in out.replace(str(ROOT) + '/', '')
    assert 'ImageNet/distill/torchvision:resnet34_torchvision:resnet18/AT/s0' in out and 'teacher: published weights IMAGENET1K_V1' in out
    assert 'DOT(alpha=0.5, T=1.0, delta=0.09) torchvision:resnet50 -> MobileNetV1; 100 ep, bs 256, lr 0.1 (x0.1 at 30/60/90)' in out

def test_data_pipeline_bench(tree):
    r = run_kdnb('bench', '--data', 'image-folder', '--data-root', tree, '--bs', '4', '--workers', '1', '--steps', '3', check=True)
    assert r.stdout.startswith('data pipeline image-folder') and 'img/s, 1 worker processes, batch 4, 12 images' in r.stdout, r.stdout
