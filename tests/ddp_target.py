"A function the DDP tests run in several processes (`kdnb.distributed.run_in_processes`), with tests/ on PYTHONPATH."
import torch, torch.nn as nn
from fastai.data.load import DataLoader
from fastai.data.core import DataLoaders
from kdnb.config import Recipe
from kdnb.train import make_learner
from kdnb.distributed import unwrap, process_batch

def toy_data(n=64, d=5, classes=3, seed=0):
    "Fixed inputs and labels: the same in every process."
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)

def toy_model(d=5, classes=3):
    torch.manual_seed(1)
    return nn.Linear(d, classes)  # no BatchNorm: a process's share of the batch gives the same gradients as the whole batch

def train_toy(bs:int, epochs:int=2, lr:float=0.1) -> dict:
    "Train the toy model through kdnb's `make_learner` (DDP when under torchrun), unshuffled; its final weights."
    x, y = toy_data()
    items = list(zip(x, y))
    dls = DataLoaders(DataLoader(items, bs=process_batch(bs), shuffle=False, drop_last=True),
                      DataLoader(items, bs=bs, shuffle=False), device='cpu')
    recipe = Recipe(epochs=epochs, lr=lr, milestones=(100,), bs=bs, wd=5e-4, momentum=0.9)
    learn = make_learner(dls, toy_model(), recipe, '.', metrics=[])
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, lr)
    return {k: v.tolist() for k, v in unwrap(learn.model).state_dict().items()}
