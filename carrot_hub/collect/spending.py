"""`--max-spend`: how much a call will cost before it is made, and when to stop asking.

A call's estimate is price table × tokens: its input tokens counted with the router's tokenizer, its
output tokens predicted as the mean of what that model answered so far in this collection (the
store's answers count, so a rerun starts informed). A model with no answer yet is predicted at
`max_tokens` when the run sets one (an upper bound: that call cannot overshoot) and else at
`DEFAULT_OUTPUT_TOKENS` (1,024, longer than the typical chat answer) until its first answers arrive.

A judge's call is estimated the same way: its input is the rubric, the prompt, the reference and the
graded answer (the answer at its model's predicted output tokens before it exists, at its real
count after), its output at the judge's `max_tokens` (an upper bound: the judge is asked with it).
A candidate's call reserves its own estimate plus its grading's, so no answer is bought that the
run could not afford to grade; the grading then reserves its own estimate again before the judge is
asked, and an answer whose grading would pass the limit is left unscored for a later run.

Calls in flight hold their estimate; a call starts only if what this run spent (candidates and
judges, realised) plus the estimates held plus its own estimate stay within the limit. The first call
that would pass it stops the run: no new call starts, those in flight finish. The limit is for one
run (one invocation); the summary gives what was realised.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import BadInputError
from .asking import DOLLARS_PER_MILLION, cell_cost
from .judge import JUDGE_SAMPLING

DEFAULT_OUTPUT_TOKENS = 1024


class SpendLimitError(BadInputError):
    """`--max-spend` cannot be applied (negative, or a model without a price)."""


class SpendTracker:
    """
    Realised spend of one run, and the `max_spend` gate (None: no limit, spend is still counted).

    `history` maps each model to `(answers seen, their output tokens summed)`.
    """

    def __init__(self, max_spend: float | None, prices: Mapping | None, models, max_tokens: int | None = None):
        if max_spend is not None and (not isinstance(max_spend, (int, float)) or not max_spend >= 0):
            raise SpendLimitError(f"--max-spend must be a number of US dollars ≥ 0, got {max_spend!r}.")
        self.max_spend = None if max_spend is None else float(max_spend)
        self.prices = dict(prices or {})
        if self.max_spend is not None:
            unpriced = [m for m in models if m not in self.prices]
            if unpriced:
                raise SpendLimitError(
                    f"--max-spend needs a price for every model asked; {', '.join(unpriced)} "
                    "has none: pass --prices FILE with their $ per million input and output tokens."
                )
        self.max_tokens = max_tokens
        self.judge_output_tokens = JUDGE_SAMPLING["max_tokens"]
        self.history: dict[str, list] = {m: [0, 0] for m in models}
        self.spent = 0.0        # candidates' realised cost, this run
        self.judge_spent = 0.0  # judges' realised cost, this run
        self.held = 0.0         # estimates of calls in flight
        self.stopped = False

    def observe(self, model: str, output_tokens: int | None) -> None:
        """Count one answer of `model` (from the store or this run) in its output-token history."""
        if output_tokens is not None:
            seen = self.history.setdefault(model, [0, 0])
            seen[0] += 1
            seen[1] += output_tokens

    def predicted_output_tokens(self, model: str) -> float:
        count, total = self.history.get(model, (0, 0))
        if count:
            return total / count
        return float(self.max_tokens if self.max_tokens is not None else DEFAULT_OUTPUT_TOKENS)

    def estimate(self, model: str, input_tokens: int) -> float:
        """Predicted US$ of asking `model` a prompt of `input_tokens` tokens (0 for an unpriced model)."""
        price = self.prices.get(model)
        if not price:
            return 0.0
        return (input_tokens * price["input"] + self.predicted_output_tokens(model) * price["output"]) / DOLLARS_PER_MILLION

    def require_prices(self, judges) -> None:
        """Under a limit, every judge needs a price too (its calls are estimated like the candidates')."""
        unpriced = [judge for judge in judges if self.max_spend is not None and judge not in self.prices]
        if unpriced:
            raise SpendLimitError(
                f"--max-spend needs a price for every model asked; the judge {', '.join(unpriced)} has none: "
                "pass --prices FILE with its $ per million input and output tokens."
            )

    def judge_estimate(self, judge: str, input_tokens: float) -> float:
        """Predicted US$ of one grading by `judge` with `input_tokens` tokens of rubric, prompt and answer."""
        return cell_cost(self.prices.get(judge), input_tokens, self.judge_output_tokens) or 0.0

    def reserve(self, model: str, input_tokens: int, extra: float = 0.0) -> float | None:
        """
        Hold the estimate of one call (plus `extra`, e.g. its grading's) and return it; None (and
        `stopped`) when it would pass the limit.
        """
        return self.reserve_amount(self.estimate(model, input_tokens) + extra)

    def reserve_amount(self, estimate: float) -> float | None:
        """Hold `estimate` US$ for a call about to start; None (and `stopped`) when it would pass the limit."""
        if self.stopped:
            return None
        if self.max_spend is not None and self.spent + self.judge_spent + self.held + estimate > self.max_spend:
            self.stopped = True
            return None
        self.held += estimate
        return estimate

    def settle(self, held: float, cost: float | None, judge_cost: float = 0.0) -> None:
        """A call ended: release its estimate and add what it really cost (None: unpriced or failed)."""
        self.held = max(self.held - held, 0.0)
        self.spent += cost or 0.0
        self.judge_spent += judge_cost

    def release(self, held: float) -> None:
        """A reserved call ended (its realised cost is added apart)."""
        self.held = max(self.held - held, 0.0)

    def add_judge(self, cost: float) -> None:
        self.judge_spent += cost or 0.0
