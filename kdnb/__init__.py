__version__ = "0.1.0"

# The public API at the top level, imported on first use so that `import kdnb` stays light (no torch, no fastai).
_API = {'create_model': 'kdnb.models.core', 'list_models': 'kdnb.models.core', 'create_method': 'kdnb.methods',
        'list_methods': 'kdnb.methods', 'train_model': 'kdnb.train', 'distill_model': 'kdnb.distill', 'distill_fused': 'kdnb.fused',
        'RunConfig': 'kdnb.config', 'launch_run': 'kdnb.config'}

def __getattr__(name):
    if name not in _API: raise AttributeError(f"module 'kdnb' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_API[name]), name)

def __dir__(): return sorted([*globals(), *_API])
