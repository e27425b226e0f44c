import contextlib, io, os, subprocess, sys, warnings
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
KDNB = str(Path(sys.executable).parent/'kdnb')

def _checked(r, check:bool):
    if check and r.returncode: raise AssertionError(f"{' '.join(map(str, r.args))} failed:\n{r.stdout}\n{r.stderr}")
    return r

def run_kdnb(*args, cwd=None, check=False, timeout=600, env=None):
    "Run the installed `kdnb` command (with `env` added to the environment); returns the CompletedProcess."
    r = subprocess.run([KDNB, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                       env={**os.environ, 'PYTHONWARNINGS': 'ignore', **(env or {})})
    return _checked(r, check)

def run_main(*args, check=False):
    """`kdnb.cli.main` in this process, for commands that answer at once (listings, bad input): the command line's own code,
    without the 10 s of interpreter start-up and imports each subprocess pays. Returns what `run_kdnb` returns."""
    from kdnb.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code if isinstance(e.code, int) else 1
    r = subprocess.CompletedProcess(['kdnb', *map(str, args)], code, out.getvalue(), err.getvalue())
    return _checked(r, check)

@pytest.fixture
def kdnb_cli(): return run_kdnb

@pytest.fixture
def kdnb_main(): return run_main

def has_cuda():
    import torch
    return torch.cuda.is_available()
