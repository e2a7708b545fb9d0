"""Model cards for CARROT routers: a Jinja2 template (`template.md`) and what fills it (`build.py`)."""

from .build import build_model_card, card_metadata, load_eval_results

__all__ = ["build_model_card", "card_metadata", "load_eval_results"]
