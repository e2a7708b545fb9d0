"""carrot_hub: CARROT, a cost-aware rate-optimal LLM router, as a Hugging Face model.

Importing the package registers the router with transformers' Auto classes, so
`AutoModel.from_pretrained(folder_or_repo)` works without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_carrot import CarrotConfig
from .modeling_carrot import CarrotRouter, CarrotRouterOutput, PromptPredictions, RoutingDecision

AutoConfig.register(CarrotConfig.model_type, CarrotConfig, exist_ok=True)
AutoModel.register(CarrotConfig, CarrotRouter, exist_ok=True)
# save_pretrained then writes auto_map and copies the Hub files (hub_code.py lists them) next to config.json.
CarrotConfig.register_for_auto_class()
CarrotRouter.register_for_auto_class("AutoModel")

from .building import new_router  # noqa: E402
from .collect import collect  # noqa: E402
from .data import load_routing_table  # noqa: E402
from .default import default_router  # noqa: E402
from .pipeline import register_pipeline as _register_pipeline  # noqa: E402
from .router_publishing import install_router_hooks as _install_router_hooks  # noqa: E402

_register_pipeline()  # pipeline("llm-routing", model=...)
# save_pretrained writes the CARROT model card; push_to_hub sends it (modeling_carrot.py cannot import us).
_install_router_hooks()

__all__ = [
    "CarrotConfig",
    "CarrotRouter",
    "CarrotRouterOutput",
    "PromptPredictions",
    "RoutingDecision",
    "collect",
    "default_router",
    "load_routing_table",
    "new_router",
]
__version__ = "0.1.0"
