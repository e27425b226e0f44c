"Speed options end to end: `kdnb bench`, the device pipeline and the teacher cache through `kdnb distill`, and the GPU checks."
import json, re
import pytest
from conftest import run_kdnb, has_cuda
from test_cli import one_line_error

def test_bench_cpu_prints_ratio():
    r = run_kdnb('bench', '--device', 'cpu', '--pair', 'ResNet-8:ResNet-8', '--steps', '3', '--warmup', '1', '--workers', '0', '--images', '256', check=True)
    lines = r.stdout.strip().splitlines()
    assert re.fullmatch(r'ratio kdnb/reference: \d+\.\d\d', lines[-1]), lines[-1]
    for label in ['reference', 'kdnb, all options off', '+ teacher cache']: assert any(l.startswith(label) for l in lines), r.stdout
    one_line_error(run_kdnb('bench', '--device', 'cpu', '--pair', 'WRN-40-4'), 'TEACHER:STUDENT')

def test_distill_with_device_pipeline_and_teacher_cache(tmp_path):
    common = ['--epochs', '1', '--bs', '32', '--max-items', '64', '--no-progress', '--device', 'cpu']
    run_kdnb('train', '--model', 'ResNet-8', '--out', tmp_path/'t', '--speed', 'off,device_data', *common, check=True)
    for i, speed in enumerate(['off,device_data,teacher_cache', 'off,device_data,teacher_cache']):
        r = run_kdnb('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', tmp_path/'t'/'last.pt', '--student', 'ResNet-8',
                     '--method', 'DIST', '--speed', speed, '--out', tmp_path/f's{i}', *common, check=True)
        res = json.loads((tmp_path/f's{i}'/'results.json').read_text())
        assert res['config']['speed'] == 'device_data,teacher_cache' and 0 <= res['last']['top1'] <= 1
    caches = list((tmp_path/'t'/'logit_cache').glob('*.pt'))
    assert len(caches) == 1  # built by the first student, found by the second
    # a method that needs the teacher's features runs without the cache, and says so
    r = run_kdnb('distill', '--teacher', 'ResNet-8', '--teacher-ckpt', tmp_path/'t'/'last.pt', '--student', 'ResNet-8',
                 '--method', 'SRD', '--speed', 'off,device_data,teacher_cache', '--out', tmp_path/'srd', *common, check=True)
    assert 'teacher_cache is off' in r.stdout
    one_line_error(run_kdnb('distill', '--teacher', 'ResNet-8', '--student', 'ResNet-8', '--speed', 'fast,warp', '--out', tmp_path/'x', *common),
                   "unknown speed option 'warp'")

@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not has_cuda(), reason='needs a CUDA GPU')
def test_bench_gpu():
    r = run_kdnb('bench', '--device', 'cuda', '--steps', '50', check=True, timeout=1200)
    print(r.stdout)
    assert re.search(r'ratio kdnb/reference: \d+\.\d\d$', r.stdout.strip())
