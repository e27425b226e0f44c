import contextlib, io, os, re, subprocess, sys, warnings
import importlib.metadata as md
from packaging.requirements import Requirement
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
# the installed `kdnb` command; where kdnb is importable but not installed (the GPU check puts it on PYTHONPATH), the same
# entry point through this Python
KDNB = [str(Path(sys.executable).parent/'kdnb')] if (Path(sys.executable).parent/'kdnb').exists() else \
       [sys.executable, '-c', 'import sys; from kdnb.cli import main; sys.exit(main())']

def _checked(r, check:bool):
    if check and r.returncode: raise AssertionError(f"{' '.join(map(str, r.args))} failed:\n{r.stdout}\n{r.stderr}")
    return r

def run_kdnb(*args, cwd=None, check=False, timeout=600, env=None):
    "Run the installed `kdnb` command (with `env` added to the environment); returns the CompletedProcess."
    r = subprocess.run([*KDNB, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                       env={**os.environ, 'PYTHONWARNINGS': 'ignore', **(env or {})})
    return _checked(r, check)

def run_main(*args, check=False):
    """`kdnb.cli.main` in this process: the command line's own code, without the 10 s of interpreter start-up and imports each
    subprocess pays, for every command whose test is not about the process itself (listings, bad input, short runs); a kill, a
    signal, torchrun, the installed console script or an environment read at import need `run_kdnb`. Returns what `run_kdnb` returns."""
    from kdnb.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code if isinstance(e.code, int) else 1
    r = subprocess.CompletedProcess(['kdnb', *map(str, args)], code, out.getvalue(), err.getvalue())
    return _checked(r, check)

# The files that take minutes, longest first (measured on 2 cores): `make test` hands whole files to its two workers in
# collection order (--dist loadfile --no-loadscope-reorder), so the long ones start first and the short ones fill the gaps at
# the end, rather than one long file running alone while the other worker idles. Files not named follow, in name order.
LONG_FILES_FIRST = ['test_grid.py', 'test_speed.py', 'test_distributed.py', 'test_kill.py', 'test_methods.py', 'test_cli.py',
                    'test_gpu_check.py', 'test_resume.py', 'test_docs.py', 'test_install.py', 'test_export.py']

def pytest_collection_modifyitems(items):
    rank = {f: i for i, f in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: each file's tests keep their order

@pytest.fixture
def kdnb_cli(): return run_kdnb

@pytest.fixture
def kdnb_main(): return run_main

def has_cuda():
    import torch
    return torch.cuda.is_available()

# A Python that sees chosen installed packages and nothing else (the GPU image, a non-editable install): by links, not downloads.
def dist_key(name): return re.sub(r'[-_.]+', '-', name).lower()

def dependency_closure(roots) -> set:
    "The installed distributions `roots` need, themselves included (extras left out)."
    seen, todo = set(), [dist_key(r) for r in roots]
    while todo:
        n = todo.pop()
        if n in seen: continue
        try: d = md.distribution(n)
        except md.PackageNotFoundError: continue
        seen.add(n)
        todo += [dist_key(r.name) for r in map(Requirement, d.requires or []) if not r.marker or r.marker.evaluate({'extra': ''})]
    return seen

def link_distributions(names, dst:Path):
    "A folder that holds the installed distributions `names` (their top-level files and folders, linked), for `sys.path`."
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        d = md.distribution(n)
        for top in {f.parts[0] for f in d.files or [] if f.parts[0] not in ('..', '__pycache__', 'bin')}:
            src, link = Path(d.locate_file(top)), dst/top
            if src.exists() and not link.exists(): link.symlink_to(src)
    return dst


def isolated_python(where:Path, *folders) -> Path:
    "The python of a fresh venv at `where` whose `sys.path` holds `folders` (through a .pth file) and nothing of this environment."
    import venv
    venv.create(where, with_pip=False)
    py = where/'bin'/'python'
    purelib = subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, 'folders.pth').write_text(''.join(f'{f}\n' for f in folders))
    return py

TWO_CELL_GRID = "dataset: cifar10-subset\nepochs: 1\nmax_items: 64\nbs: 16\nexperiments:\n  main:\n    pairs: [ResNet-8 -> ResNet-8]\n    methods: [KD]\n"

def two_cell_grid(**over) -> str:
    """The smallest real grid spec (2 cells: ResNet-8 from scratch, the teacher and the student row alike, then KD into a fresh
    ResNet-8), with top-level settings replaced (YAML values as written)."""
    lines = [l for l in TWO_CELL_GRID.splitlines() if l.split(':')[0] not in over]
    return '\n'.join([f"{k}: {v}" for k, v in over.items()] + lines) + '\n'

@contextlib.contextmanager
def compiled_alone():
    """A compiled run as in a process of its own, as the command line and the grid run it: dynamo forgets the graphs of earlier
    runs, which would count towards its limit of graphs a function; past that limit it runs the function eagerly, which fails."""
    import torch
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True): yield

class WrittenInputs:
    "Context manager recording, for each graph inductor compiles, the names of its inputs that the graph writes to and that are not static: CUDA graph trees (compile's reduce-overhead) refuse a graph with any, or copy them in and out each call."
    def __enter__(self):
        import inspect, torch
        from torch._inductor import output_code
        self._stack, self.graphs = contextlib.ExitStack(), []  # [(names of the inputs written to, names of those not static)]
        # compiled afresh, not loaded from inductor's caches, so that every graph passes through the constructor watched
        self._stack.enter_context(torch._inductor.config.patch(fx_graph_cache=False))
        self._stack.enter_context(torch._functorch.config.patch(enable_autograd_cache=False))
        cls, init = output_code.CompiledFxGraph, output_code.CompiledFxGraph.__init__
        sig = inspect.signature(init)
        assert {'gm', 'static_input_idxs'} <= set(sig.parameters), f"torch {torch.__version__} changed CompiledFxGraph: update this check"
        def watched(graph, *args, **kwargs):
            init(graph, *args, **kwargs)
            given = sig.bind(graph, *args, **kwargs).arguments
            names = [n.name for n in given['gm'].graph.nodes if n.op == 'placeholder']
            written = [names[i] for i in graph.mutated_input_idxs]
            self.graphs.append((written, [names[i] for i in graph.mutated_input_idxs if i not in set(given['static_input_idxs'])]))
        cls.__init__ = watched
        self._stack.callback(setattr, cls, '__init__', init)
        return self
    def __exit__(self, *exc): self._stack.close()
    @property
    def steps(self) -> list:
        "The graphs that write any input: training steps (a teacher's or a validation's graph writes none)."
        return [g for g in self.graphs if g[0]]

MARK_S = 1e6  # an epoch's wall time no run measures

def mark_checkpointed_epochs(*run_dirs) -> dict:
    """Set the wall time of each epoch held by `last.pt` in each unfinished run of `run_dirs` to `MARK_S`; {run dir: epochs marked}.
    A run resumed from that checkpoint carries the mark into its history, while one trained again from scratch writes measured
    times. Weights and losses cannot tell them apart: a CPU run with a fixed seed is the same both times."""
    import pandas as pd, torch
    marked = {}
    for d in map(Path, run_dirs):
        if not (d/'last.pt').exists() or (d/'results.json').exists(): continue  # a finished stage is not resumed
        ckpt = torch.load(d/'last.pt', map_location='cpu', weights_only=False)
        for row in ckpt['history']: row['seconds'] = MARK_S
        torch.save(ckpt, d/'last.pt'); marked[d] = len(ckpt['history'])
        pd.DataFrame(ckpt['history']).to_csv(d/'history.csv', index=False)  # as the checkpoint's epoch wrote it
    return marked

def assert_resumed(marked:dict):
    "Each run of `marked` (from `mark_checkpointed_epochs`) begins its history with its marked epochs: it went on from its checkpoint."
    import pandas as pd
    assert marked, "no unfinished run had a checkpoint: nothing was resumed"
    for d, n in marked.items():
        seconds = pd.read_csv(d/'history.csv').seconds.tolist()[:n]
        assert seconds == [MARK_S] * n, f"{d}: its {n} checkpointed epochs were trained again (their wall times: {seconds})"
