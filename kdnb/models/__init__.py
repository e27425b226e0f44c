"The model zoo: `create_model(name)`, `list_models(pattern)`; one module per family, registered on first use."
from kdnb.models.core import create_model, list_models, count_parameters, feature_spec, FeatureSpec, Features, FeatureHooks, extract_features
