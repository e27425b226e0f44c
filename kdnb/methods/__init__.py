"Distillation methods: the registry and the `Method` interface (`kdnb.methods.core`), then every method, by what it transfers."
from kdnb.methods.core import *
from kdnb.methods.logits import *
from kdnb.methods.features import *
from kdnb.methods.relations import *
from kdnb.methods.contrastive import *
