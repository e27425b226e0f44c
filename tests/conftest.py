import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
KDNB = str(Path(sys.executable).parent/'kdnb')

def run_kdnb(*args, cwd=None, check=False, timeout=600, env=None):
    "Run the installed `kdnb` command (with `env` added to the environment); returns the CompletedProcess."
    r = subprocess.run([KDNB, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                       env={**os.environ, 'PYTHONWARNINGS': 'ignore', **(env or {})})
    if check and r.returncode: raise AssertionError(f"kdnb {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}")
    return r

@pytest.fixture
def kdnb_cli(): return run_kdnb

def has_cuda():
    import torch
    return torch.cuda.is_available()
