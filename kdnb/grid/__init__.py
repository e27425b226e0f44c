"Benchmark grids: the spec (parse, check, expand), the store (cell folders, results, locks, events), executing a cell, the backends (local workers, Ray) and the runner (the scheduler)."
from kdnb.grid.spec import *
from kdnb.grid.store import *
from kdnb.grid.execute import *
from kdnb.grid.backends import *
from kdnb.grid.runner import *
