"""The routing table: the one in-memory form every data source is turned into."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RoutingTable:
    """
    Prompts × candidate models, with what each model did on each prompt.

    Attributes:
        prompts (`list[str]`): prompt texts, `n_prompts` of them.
        prompt_ids (`list[str]`): unique id per prompt.
        tasks (`list[str]`): source task / data set of each prompt.
        models (`list[str]`): candidate models, the column order of the arrays.
        scores (`np.ndarray` float32 `(n_prompts, n_models)`): quality in [0, 1]; NaN = missing.
        input_tokens (`np.ndarray` float32 `(n_prompts, n_models)`): prompt tokens; NaN = missing.
        output_tokens (`np.ndarray` float32 `(n_prompts, n_models)`): generated tokens; NaN = missing.
        prices (`dict` or None): `{model: {"input": $/M tokens, "output": $/M tokens}}` when known.
        split (`str` or None): the split these rows came from.
    """

    prompts: list[str]
    prompt_ids: list[str]
    tasks: list[str]
    models: list[str]
    scores: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    prices: dict[str, dict[str, float]] | None = None
    split: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        n_prompts, n_models = len(self.prompts), len(self.models)
        for name in ("scores", "input_tokens", "output_tokens"):
            array = np.asarray(getattr(self, name), dtype=np.float32)
            if array.shape != (n_prompts, n_models):
                raise ValueError(f"{name} has shape {array.shape}, expected ({n_prompts}, {n_models}).")
            setattr(self, name, array)
        if not (len(self.prompt_ids) == len(self.tasks) == n_prompts):
            raise ValueError("prompts, prompt_ids and tasks must have the same length.")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def observed(self) -> np.ndarray:
        """`(n_prompts, n_models)` bool: the score is known."""
        return ~np.isnan(self.scores)

    def cost(self, prices: Mapping[str, Mapping[str, float]] | None = None) -> np.ndarray:
        """True dollars per prompt and model `(n_prompts, n_models)` from token counts and a price table."""
        prices = prices or self.prices
        if prices is None:
            raise ValueError("This routing table has no price table; pass prices={model: {'input':…, 'output':…}}.")
        missing = [m for m in self.models if m not in prices]
        if missing:
            raise ValueError(f"The price table has no entry for {missing}.")
        p_in = np.array([prices[m]["input"] for m in self.models], dtype=np.float64)
        p_out = np.array([prices[m]["output"] for m in self.models], dtype=np.float64)
        return (self.input_tokens * p_in + self.output_tokens * p_out) / 1e6

    def subset(self, rows: Sequence[int] | np.ndarray) -> RoutingTable:
        """The table restricted to the given row indices (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        return RoutingTable(
            prompts=[self.prompts[i] for i in rows],
            prompt_ids=[self.prompt_ids[i] for i in rows],
            tasks=[self.tasks[i] for i in rows],
            models=list(self.models),
            scores=self.scores[rows],
            input_tokens=self.input_tokens[rows],
            output_tokens=self.output_tokens[rows],
            prices=self.prices,
            split=self.split,
            metadata=dict(self.metadata),
        )

    @classmethod
    def concatenate(cls, tables: Sequence[RoutingTable]) -> RoutingTable:
        """
        The rows of `tables` one after another (e.g. a source's train and test splits pooled). The
        tables must have the same models (columns follow the first table's order) and no prompt id
        twice; prices and metadata are the first table's, `split` is None.
        """
        if not tables:
            raise ValueError("concatenate needs at least one table.")
        first = tables[0]
        parts = []
        for table in tables:
            if set(table.models) != set(first.models):
                raise ValueError(f"Cannot join tables with different models: {first.models} vs {table.models}.")
            parts.append(table if list(table.models) == list(first.models) else table.select_models(first.models))
        prompt_ids = [i for table in parts for i in table.prompt_ids]
        if len(set(prompt_ids)) != len(prompt_ids):
            repeated = sorted(i for i, count in Counter(prompt_ids).items() if count > 1)[:5]
            raise ValueError(f"The tables share prompt ids (e.g. {repeated}); a prompt may be in one of them only.")
        return cls(
            prompts=[p for table in parts for p in table.prompts],
            prompt_ids=prompt_ids,
            tasks=[t for table in parts for t in table.tasks],
            models=list(first.models),
            scores=np.concatenate([table.scores for table in parts]),
            input_tokens=np.concatenate([table.input_tokens for table in parts]),
            output_tokens=np.concatenate([table.output_tokens for table in parts]),
            prices=first.prices,
            split=None,
            metadata=dict(first.metadata),
        )

    def select_models(self, models: Sequence[str]) -> RoutingTable:
        """The table restricted to the given models (in that order)."""
        unknown = [m for m in models if m not in self.models]
        if unknown:
            raise ValueError(f"{unknown} are not models of this table; it has {self.models}.")
        columns = [self.models.index(m) for m in models]
        prices = None if self.prices is None else {m: self.prices[m] for m in models if m in self.prices}
        return RoutingTable(
            prompts=list(self.prompts),
            prompt_ids=list(self.prompt_ids),
            tasks=list(self.tasks),
            models=list(models),
            scores=self.scores[:, columns],
            input_tokens=self.input_tokens[:, columns],
            output_tokens=self.output_tokens[:, columns],
            prices=prices,
            split=self.split,
            metadata=dict(self.metadata),
        )
