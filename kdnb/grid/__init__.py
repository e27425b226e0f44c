"Benchmark grids: the spec (parse, check, expand), the store (cell folders, results, locks, events) and the runner (scheduler and backends)."
from kdnb.grid.spec import *
from kdnb.grid.store import *
from kdnb.grid.runner import *
