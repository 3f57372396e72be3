"""FL-I2MoE: feature-level interaction-aware mixture-of-experts over frozen encoders, with explanations.

Importing the package registers the model with transformers' Auto classes, so
`AutoModel.from_pretrained(checkpoint)` works without `trust_remote_code` when it is installed, and installs
the fast CPU paths (`kernels`) and the checked loading and saving (`loading`) on its model classes.
"""

from transformers import AutoConfig, AutoModel

from .configuration_fli2moe import FLI2MoEConfig
from .modeling_fli2moe import FLI2MoEModel, FLI2MoEOutput, FLI2MoEPreTrainedModel
from . import kernels, loading

# the package's fast paths and checked loading, on its own copy of the model classes (remote code stays plain)
kernels.register()
loading.register()

# remote code: save_pretrained copies configuration_fli2moe.py / modeling_fli2moe.py and writes config.auto_map
FLI2MoEConfig.register_for_auto_class()
FLI2MoEModel.register_for_auto_class("AutoModel")
AutoConfig.register(FLI2MoEConfig.model_type, FLI2MoEConfig, exist_ok=True)
AutoModel.register(FLI2MoEConfig, FLI2MoEModel, exist_ok=True)

__version__ = "0.1.0"

__all__ = ["FLI2MoEConfig", "FLI2MoEModel", "FLI2MoEOutput", "FLI2MoEPreTrainedModel"]
