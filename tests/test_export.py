"The notebooks are the source of truth: exporting them must reproduce kdnb/ exactly."
import filecmp, shutil, subprocess, sys
from pathlib import Path
from conftest import ROOT

def test_nbdev_export_leaves_no_diff(tmp_path):
    for p in ('nbs', 'kdnb', 'pyproject.toml', 'README.md'):
        src = ROOT/p
        (shutil.copytree(src, tmp_path/p, ignore=shutil.ignore_patterns('__pycache__', 'assets')) if src.is_dir() else shutil.copy(src, tmp_path/p))
    exe = Path(sys.executable).parent/'nbdev-export'
    subprocess.run([str(exe)], cwd=tmp_path, check=True, capture_output=True)
    cmp = filecmp.dircmp(ROOT/'kdnb', tmp_path/'kdnb', ignore=['__pycache__', 'assets'])
    def diffs(c): return c.diff_files + c.left_only + c.right_only + [d for s in c.subdirs.values() for d in diffs(s)]
    assert not diffs(cmp), f"nbdev-export changes {diffs(cmp)}: edit the notebooks, not kdnb/, then run nbdev-export"
