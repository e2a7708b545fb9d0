"""The transformers pipeline "llm-routing": `pipeline("llm-routing", model=router_or_folder)`.

```python
>>> import carrot_hub
>>> from transformers import pipeline
>>> router = pipeline("llm-routing", model="path/to/router")
>>> router("Prove that √2 is irrational.", mu=0.3)
{'model': 'gpt-4-1106-preview', 'quality': 0.91, 'cost': 0.0052, ..., 'predictions': {...}}
>>> router(["hi", "Write a quicksort in C."], mu=0.7, prices={"<candidate name>": {"input": 3, "output": 15}}, batch_size=32)
[{...}, {...}]
```

μ, prices, allowed, max_cost and ood (the policy for prompts out of distribution) are call arguments (or pipeline-construction defaults); they only
enter `postprocess`, so the encoder's work is the same for every setting. For the fastest bulk
routing (one call, prompts sorted by length), use `CarrotRouter.route` directly.
"""

import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling_carrot import CarrotRouter, PromptPredictions, check_prompts

TASK = "llm-routing"


class LLMRoutingPipeline(Pipeline):
    """
    Per prompt: the chosen candidate LLM, its predicted quality and cost, and every candidate's
    predicted quality, output tokens and cost (a dict, as [`RoutingDecision.to_records`] gives it).
    """

    _load_tokenizer = False  # the router carries its own tokenizer (router.tokenizer)
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, model, tokenizer=None, **kwargs):
        if not isinstance(model, CarrotRouter):
            raise TypeError(f"The llm-routing pipeline needs a CarrotRouter, got {type(model).__name__}.")
        super().__init__(model=model, tokenizer=tokenizer or model.tokenizer, **kwargs)

    def _sanitize_parameters(self, mu=None, prices=None, allowed=None, max_cost=None, ood=None, **kwargs):
        if kwargs:
            raise TypeError(
                f"llm-routing got unexpected arguments {sorted(kwargs)}; it takes mu, prices, allowed, max_cost, ood."
            )
        given = {name: value for name, value in
                 (("mu", mu), ("prices", prices), ("allowed", allowed), ("max_cost", max_cost), ("ood", ood))
                 if value is not None}
        if not hasattr(self, "_routing_at_init"):  # transformers calls this first from __init__
            self._routing_at_init = given
        # Resolved and checked once per call, before any prompt is encoded (a bad value fails with the
        # router's own message); a call's values override those given when the pipeline was made.
        options = self.model.routing_options(**{**self._routing_at_init, **given})
        return {}, {}, {"options": options}

    def preprocess(self, prompt: str) -> dict[str, torch.Tensor]:
        """
        One prompt → input_ids and attention_mask `(1, seq)`, input_tokens `(1,)`, truncated `(1,)`,
        fallback_embedding `(1,)` (a static encoder found no known token: seq is 0).
        """
        if not isinstance(prompt, str):
            raise TypeError(f"llm-routing routes strings, got {type(prompt).__name__}: {prompt!r:.80}")
        check_prompts([prompt])  # the same rules as route(): an empty prompt is refused
        token_ids, input_tokens, truncated = self.model._tokenize([prompt])
        ids = torch.tensor([token_ids[0]], dtype=torch.long)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "input_tokens": torch.tensor(input_tokens, dtype=torch.float32),
            "truncated": torch.tensor(truncated, dtype=torch.bool),
            "fallback_embedding": torch.tensor([len(token_ids[0]) == 0], dtype=torch.bool),
        }

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Padded batch → quality, its band and output_tokens `(batch, n_models)`, support `(batch,)`, the extras."""
        embeddings = self.model.embed(model_inputs["input_ids"], model_inputs["attention_mask"])
        quality, output_tokens, support, low, high = self.model.predict_with_support(embeddings)
        return {
            "quality": quality.float(),
            "output_tokens": output_tokens.float(),
            "support": support.float(),
            "quality_low": low.float(),
            "quality_high": high.float(),
            "input_tokens": model_inputs["input_tokens"],
            "truncated": model_inputs["truncated"],
            "fallback_embedding": model_inputs["fallback_embedding"],
        }

    def postprocess(self, model_outputs, options=None) -> dict:
        predictions = PromptPredictions(
            quality=model_outputs["quality"].reshape(1, -1),
            output_tokens=model_outputs["output_tokens"].reshape(1, -1),
            input_tokens=model_outputs["input_tokens"].reshape(1),
            truncated=[bool(model_outputs["truncated"].reshape(-1)[0])],
            candidate_models=list(self.model.config.candidate_models),
            support=model_outputs["support"].reshape(1),
            quality_low=model_outputs["quality_low"].reshape(1, -1),
            quality_high=model_outputs["quality_high"].reshape(1, -1),
            fallback_embedding=[bool(model_outputs["fallback_embedding"].reshape(-1)[0])],
        )
        decision = self.model.decide(predictions, options=options)
        record = decision.to_records()[0]
        chosen = record["predictions"][record["model"]]
        return {"model": record["model"], "quality": chosen["quality"], "cost": chosen["cost"], "mu": decision.mu,
                **{key: value for key, value in record.items() if key != "model"}}

    def get_inference_context(self):
        return torch.inference_mode


def register_pipeline() -> None:
    """Make `pipeline("llm-routing", ...)` available (done on `import carrot_hub`)."""
    if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is LLMRoutingPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=LLMRoutingPipeline, pt_model=AutoModel, type="text")
