"""CARROT router: a prompt encoder plus per-candidate predictions of quality and output tokens,
and `route()`, which turns them into a choice of LLM with the cost-aware decision rule.

This file travels to the Hub as remote code with `configuration_carrot.py` and its flat siblings
(the decision rule and outputs, the kNN memory, reliability, the static tokenizer, the encoders):
it imports only torch, transformers, the standard library and those siblings (relative imports,
which transformers follows to download and save them). Names that moved to a sibling are
imported here, so `from carrot_hub.modeling_carrot import X` keeps working.
"""

import itertools
import json
import math
import os
import re
import threading
import unicodedata
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoTokenizer, PreTrainedModel
from transformers.utils import logging as transformers_logging

from .configuration_carrot import (
    DEFAULT_MAX_REMEMBERED_ROWS,
    CarrotConfig,
    check_mu,
    check_ood_policy,
    check_latency_profile,
    check_max_latency,
    check_number,
    check_positive_int,
    check_price,
)
from .decision_carrot import (
    DOLLARS_PER_MILLION,
    CarrotRouterOutput,
    PromptEncoding,
    PromptPredictions,
    RoutingDecision,
    RoutingOptionError,
    RoutingOptions,
    carrot_utility,
    choose_candidates,
    latency_mask,
    predicted_cost,
    predicted_latency,
)
from .encoder_carrot import (
    MAX_BYTES_PER_TOKEN,
    TOKENIZE_CHUNK_PROMPTS,
    CarrotStaticEncoder,
    PromptEncoder,
    StaticPromptEncoder,
    TransformerPromptEncoder,
    mean_pool,
    pad_batch,
    prompt_encoder_for,
)
from .knn_memory_carrot import CarrotKNNMemory, mean_of_largest, prompt_key_of, top_k_mean_similarity
from .reliability_carrot import CarrotReliability, interpolate_monotone
from .tokenization_carrot import CachedWordPieceTokenizer

# Past this many training prompts, support's reference (their leave-one-out similarities) is read off
# a seeded sample of them, each searched against all of them: an all-by-all search grows as n².
SUPPORT_REFERENCE_PROBES = 16384
# Characters that carry no content: whitespace, separators, control and format (zero-width) ones.
_NO_CONTENT_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# Runs of common no-content characters (all of them in `_NO_CONTENT_CATEGORIES`), skipped at C speed
# so that checking a prompt of megabytes of zero-width characters costs milliseconds, not a second.
_NO_CONTENT_RUN = re.compile(
    "[\\s\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000e0001\U000e0020-\U000e007f]*"
)
_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holding one cannot be encoded as UTF-8: it is not text
logger = transformers_logging.get_logger(__name__)


class CarrotMLPHeads(nn.Module):
    """Two small MLPs on the prompt embedding: quality logits and log(1 + output tokens) per candidate."""

    def __init__(self, config: CarrotConfig, embedding_size: int):
        super().__init__()
        n_models, hidden = config.num_candidates, config.head_hidden_size
        self.quality = nn.Sequential(
            nn.Linear(embedding_size, hidden), nn.GELU(), nn.Dropout(config.head_dropout), nn.Linear(hidden, n_models)
        )
        self.log_output_tokens = nn.Sequential(
            nn.Linear(embedding_size, hidden), nn.GELU(), nn.Dropout(config.head_dropout), nn.Linear(hidden, n_models)
        )

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(batch, hidden)` → quality logits `(batch, n_models)`, log1p(tokens) `(batch, n_models)`."""
        return self.quality(embeddings), self.log_output_tokens(embeddings)


class CarrotPreTrainedModel(PreTrainedModel):
    config_class = CarrotConfig
    base_model_prefix = "carrot"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            module.weight.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except Exception as error:
            explained = _explain_load_error(error, pretrained_model_name_or_path, _static_table_mismatch(pretrained_model_name_or_path))
            if explained is error:
                raise
            raise explained from error
        source = str(pretrained_model_name_or_path)
        check_predictor_weights(model, info, source)
        memory = getattr(model, "predictor", None)
        if isinstance(memory, CarrotKNNMemory) and not model.config.knn_prompt_keys:
            # saved without prompt keys: the buffer was not in the file (and may hold garbage), so none is known
            memory.prompt_keys = torch.zeros(memory.embeddings.shape[0], dtype=torch.int64)
        model.check_consistency(source=source)
        if isinstance(model, CarrotRouter):
            model.tokenizer  # a router without its tokenizer fails here, not at the first route()
        if not model.config.has_support:
            logger.warning(
                f"The router at {source} was saved before routers measured support: it routes "
                "as before, with support and in_distribution reported as unknown; retrain it to get them."
            )
        return (model, info) if wants_info else model


def check_predictor_weights(model, loading_info: dict, source: str) -> None:
    """
    Raise `ValueError` when model.safetensors lacks the predictor `config.predictor_kind` names
    (transformers would otherwise initialise it afresh: every prediction the same meaningless value).
    """
    expected = [key for key in model.state_dict() if key.startswith("predictor.")]
    missing = [key for key in loading_info.get("missing_keys", ()) if key.startswith("predictor.")]
    unexpected = [key for key in loading_info.get("unexpected_keys", ()) if key.startswith("predictor.")]
    if not missing or (not unexpected and len(missing) < len(expected)):
        return
    found = {"predictor.embeddings": "knn", "predictor.quality.0.weight": "mlp"}
    saved_kind = next((kind for key, kind in found.items() if key in unexpected), None)
    saved = f"the weights hold a {saved_kind!r} predictor" if saved_kind else "the weights hold no such predictor"
    raise ValueError(
        f"The router at {source}: config.json says predictor_kind={model.config.predictor_kind!r} but "
        f"model.safetensors lacks {missing[0]!r} ({len(missing)} predictor weights missing; {saved}). "
        "Restore the config.json saved with these weights."
    )


def _static_table_mismatch(source) -> str | None:
    """For a local static router whose saved token table differs from its config: what differs, else None."""
    try:
        config = CarrotConfig.from_pretrained(source)
        if config.encoder_kind != "static":
            return None
        # The safetensors header (8-byte length, then JSON) gives the shape without reading the table.
        with open(os.path.join(source, "model.safetensors"), "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        shape = tuple(header["encoder.token_embeddings.weight"]["shape"])
    except Exception:
        return None
    expected = (config.static_vocab_size, config.static_embedding_size)
    if shape == expected:
        return None
    return f"model.safetensors holds a {shape[0]} × {shape[1]} token table, config.json says {expected[0]} × {expected[1]}"


def _explain_load_error(error: Exception, source, static_mismatch: str | None = None) -> Exception:
    text = str(error)
    lowered = text.lower()
    if "mismatch" in lowered and static_mismatch:
        return ValueError(
            f"The router at {source} does not match its config.json: its static token table has another shape "
            f"({static_mismatch}). Restore config.json (static_vocab_size, static_embedding_size) or the "
            "weights from the same training run."
        )
    if "mismatch" in lowered:
        return ValueError(
            f"The router at {source} does not match its config.json: the weights were trained for a "
            "different number of candidates (or memory size) than candidate_models and the price table "
            "list. Restore config.json, or add/remove candidates with the tools made for it (`carrot "
            "add-model` / `carrot remove-model`), which update weights and config together."
        )
    if type(error).__name__ == "SafetensorError" or "deserializ" in lowered or "incomplete metadata" in lowered:
        return OSError(
            f"Could not read the weights file model.safetensors of the router at {source}: it is "
            f"corrupted or truncated ({text.splitlines()[0] if text else type(error).__name__}). "
            "Download or save the router again."
        )
    return error


class CarrotRouter(CarrotPreTrainedModel):
    r"""
    A CARROT router: a BERT-family sentence encoder (mean pooled, L2-normalised) and a predictor
    (`config.predictor_kind`: `"mlp"` heads or a `"knn"` memory) giving, for every candidate LLM,
    its expected quality and the number of tokens it will write. [`route`] turns these into a
    choice with CARROT's rule argmax_m (1 − μ)·quality_m − μ·cost_m / cost_scale.

    Example:

    ```python
    >>> from transformers import AutoModel
    >>> router = AutoModel.from_pretrained("path/or/org-router")
    >>> decision = router.route(["Prove that √2 is irrational.", "hi!"], mu=0.3)
    >>> decision.models
    ```
    """

    # `from_pretrained(..., dtype=torch.bfloat16)` halves the encoder; the predictor (kNN memory
    # or heads) stays float32 so that neighbour search and quality estimates keep their precision.
    _keep_in_fp32_modules_strict = ["predictor", "reliability"]

    def __init__(self, config: CarrotConfig):
        super().__init__(config)
        # One implementation per encoder kind (transformer or static table); the router never branches on it.
        self.prompt_encoder = prompt_encoder_for(config)
        self.encoder = self.prompt_encoder.build_module(config)
        hidden = self.embedding_size
        if config.predictor_kind == "knn":
            self.predictor = CarrotKNNMemory(config, hidden)
        else:
            self.predictor = CarrotMLPHeads(config, hidden)
        # Routers saved before support existed have none: they route as before, support unknown.
        self.reliability = CarrotReliability(config, hidden) if config.has_support else None
        self._tokenizer = None
        self._tokenizer_lock = threading.Lock()
        self._remember_lock = threading.Lock()
        self.post_init()

    @property
    def is_static(self) -> bool:
        """Whether the encoder is a static token table (`config.encoder_kind == "static"`)."""
        return self.config.encoder_kind == "static"

    @property
    def embedding_size(self) -> int:
        """Width of the prompt embeddings the encoder gives (and the predictor reads)."""
        return self.prompt_encoder.embedding_size(self)

    # ----------------------------------------------------------------------------------- tensors

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`(batch, seq)` token ids → `(batch, hidden)` float32 L2-normalised mean-pooled embeddings."""
        return self.prompt_encoder.embed(self, input_ids, attention_mask)

    def predict_from_embeddings(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        `(batch, hidden)` embeddings → quality `(batch, n_models)` in [0, 1] and output tokens
        `(batch, n_models)` ≥ 0, without the encoder (for precomputed embeddings). Quality is the
        calibrated, support-aware one that `route()` uses (see [`CarrotReliability`]).
        """
        quality, output_tokens, _, _, _ = self.predict_with_support(embeddings)
        return quality, output_tokens

    def predict_raw(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The predictor's own quality and output tokens `(batch, n_models)`, before calibration and support."""
        quality, log_tokens = self._raw_predictions(embeddings)
        if self.config.predictor_kind == "mlp":
            quality = torch.sigmoid(quality)
        return quality, self._tokens_from_log(log_tokens)

    def predict_with_support(self, embeddings: torch.Tensor):
        """
        `(batch, hidden)` embeddings → `(quality, output_tokens, support, quality_low, quality_high)`:
        quality, band and tokens `(batch, n_models)`, support `(batch,)` (NaN when the router has no
        support statistics, i.e. was saved before they existed).
        """
        return self._finish_predictions(*self._search_predictions(embeddings))

    def _search_predictions(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        The part of [`predict_with_support`] that reads the embeddings `(batch, hidden)`, in a few
        large torch calls: the predictor's raw quality (logits for MLP heads) and log1p(tokens)
        `(batch, n_models)`, and the mean similarity of the `support_k` nearest training prompts
        `(batch,)` (None for a router without support statistics).
        """
        reliability = self.reliability
        if reliability is None:
            return *self._raw_predictions(embeddings), None
        if reliability.support_embeddings is None and isinstance(self.predictor, CarrotKNNMemory):
            # Support is measured against the kNN memory: one search serves both.
            return self.predictor.predict_with_similarity(embeddings, similarity_k=self.config.support_k)
        quality, log_tokens = self._raw_predictions(embeddings)
        return quality, log_tokens, top_k_mean_similarity(embeddings, self.support_memory, self.config.support_k)

    def _finish_predictions(
        self, quality: torch.Tensor, log_tokens: torch.Tensor, similarity: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """
        What [`_search_predictions`] gives → `(quality, output_tokens, support, quality_low,
        quality_high)`: many small element-wise calls, cheap for any batch size.
        """
        if self.config.predictor_kind == "mlp":
            quality = torch.sigmoid(quality)
        output_tokens = self._tokens_from_log(log_tokens)
        if similarity is None:
            support = torch.full((quality.shape[0],), math.nan, device=quality.device)
            return quality, output_tokens, support, quality, quality
        support = self.reliability.support_from_similarity(similarity).to(quality.device)
        quality, low, high = self.reliability.adjust(
            quality, support, self.config.support_threshold, self.config.shrink_floor,
            self.config.prior_shrink, self.config.ood_pessimism, self.config.ood_pessimism_support,
        )
        return quality, output_tokens, support, low, high

    @property
    def support_memory(self) -> torch.Tensor:
        """The training prompts' embeddings `(n, hidden)` support is measured against (a kNN router's memory)."""
        if self.reliability is not None and self.reliability.support_embeddings is not None:
            return self.reliability.support_embeddings
        if isinstance(self.predictor, CarrotKNNMemory):
            return self.predictor.embeddings
        raise ValueError("This router keeps no training-prompt embeddings; call fit_support(embeddings) first.")

    @torch.no_grad()
    def fit_support(
        self,
        embeddings: torch.Tensor | None = None,
        k: int | None = None,
        threshold: float | None = None,
        max_reference: int = 4096,
        max_memory: int = 20000,
        seed: int = 0,
        max_probes: int = SUPPORT_REFERENCE_PROBES,
    ) -> torch.Tensor:
        """
        Store what `support` needs: the training prompts' leave-one-out similarities (sorted, or
        `max_reference` quantiles of them). A kNN router measures against its memory; other routers
        keep `embeddings (n, hidden)` of their training prompts (a seeded sample of `max_memory` rows
        when there are more). Calibration already set is kept. Returns the leave-one-out
        similarities `(n,)`, or `(max_probes,)` on a memory of more rows: then the reference is read
        off a seeded sample of `max_probes` rows, each searched against the whole memory (cost
        max_probes · n, not n²; a support s is then off by a standard error of √(s(1 − s)/max_probes),
        0.0008 at s = 0.01 for 16,384 probes).
        """
        if isinstance(self.predictor, CarrotKNNMemory):
            memory, kept = self.predictor.embeddings.float(), 0
        else:
            if embeddings is None:
                raise ValueError("fit_support needs the training prompts' embeddings for a router without a kNN memory.")
            memory = torch.as_tensor(embeddings, dtype=torch.float32).detach().clone()
            if memory.shape[0] > max_memory:
                rows = torch.randperm(memory.shape[0], generator=torch.Generator().manual_seed(seed))[:max_memory]
                memory = memory[rows.sort().values]
            kept = memory.shape[0]
        if memory.shape[0] < 2:
            raise ValueError("Support needs at least two training prompts.")
        k = int(k or self.config.support_k)
        if memory.shape[0] > max_probes:
            probes = torch.randperm(memory.shape[0], generator=torch.Generator().manual_seed(seed))[:max_probes].sort().values
            similarity = top_k_mean_similarity(memory[probes.to(memory.device)], memory, k, self_rows=probes)
        else:
            similarity = top_k_mean_similarity(memory, memory, k, exclude_self=True)
        reference = similarity.sort().values
        if reference.shape[0] > max_reference:
            levels = (torch.arange(max_reference, dtype=torch.float64) + 0.5) / max_reference
            reference = torch.quantile(similarity.double(), levels).float()
        previous = self.reliability
        self.config.support_k = k
        self.config.support_reference_size = int(reference.shape[0])
        self.config.support_memory_size = int(kept)
        if threshold is not None:
            self.config.support_threshold = float(threshold)
        self.config.validate_reliability_fields()
        device = self.predictor_device
        self.reliability = CarrotReliability(self.config, memory.shape[1]).to(device)
        self.reliability.reference = reference.to(device)
        if kept:
            self.reliability.support_embeddings = memory.to(device)
        if previous is not None:
            for name in ("calibration_x", "calibration_y", "prior", "spread_in", "spread_out"):
                setattr(self.reliability, name, getattr(previous, name).clone())
        return similarity

    @torch.no_grad()
    def set_calibration(
        self,
        calibration_x: torch.Tensor,
        calibration_y: torch.Tensor,
        prior: torch.Tensor,
        spread_in: torch.Tensor | None = None,
        spread_out: torch.Tensor | None = None,
        method: str = "isotonic",
        shrink_floor: float | None = None,
        prior_shrink: float | None = None,
        ood_pessimism: float | None = None,
        ood_pessimism_support: float | None = None,
    ) -> None:
        """
        Set the per-candidate calibration maps (knots `(n_models, n_knots)`, sorted by x), the prior
        quality `(n_models,)`, the band's half-widths `(n_models,)` and, when given, the shrinkage
        toward the prior at support 0 (`shrink_floor`) and everywhere (`prior_shrink`, λ) (see
        [`CarrotReliability`]). Needs support first ([`fit_support`]).
        """
        if self.reliability is None:
            raise ValueError("Fit support (router.fit_support(...)) before setting the calibration.")
        n_models = self.config.num_candidates
        calibration_x = torch.as_tensor(calibration_x, dtype=torch.float32)
        calibration_y = torch.as_tensor(calibration_y, dtype=torch.float32)
        if calibration_x.shape != calibration_y.shape or calibration_x.ndim != 2 or calibration_x.shape[0] != n_models:
            raise ValueError(f"calibration knots must both be (n_models={n_models}, n_knots) tensors.")
        if calibration_x.shape[1] < 2:
            raise ValueError("A calibration map needs at least two knots.")
        device = self.predictor_device
        zeros = torch.zeros(n_models)
        values = {
            "calibration_x": calibration_x,
            "calibration_y": calibration_y,
            "prior": torch.as_tensor(prior, dtype=torch.float32).reshape(n_models),
            "spread_in": zeros.clone() if spread_in is None else torch.as_tensor(spread_in, dtype=torch.float32).reshape(n_models),
            "spread_out": zeros.clone() if spread_out is None else torch.as_tensor(spread_out, dtype=torch.float32).reshape(n_models),
        }
        for name, value in values.items():
            setattr(self.reliability, name, value.contiguous().to(device))
        self.config.calibration_knots = int(calibration_x.shape[1])
        self.config.calibration_method = method
        if shrink_floor is not None:
            self.config.shrink_floor = float(shrink_floor)
        if prior_shrink is not None:
            self.config.prior_shrink = float(prior_shrink)
        if ood_pessimism is not None:
            self.config.ood_pessimism = float(ood_pessimism)
        if ood_pessimism_support is not None:
            self.config.ood_pessimism_support = float(ood_pessimism_support)
        self.config.validate_reliability_fields()

    @property
    def predictor_device(self) -> torch.device:
        tensors = [*self.predictor.parameters(), *self.predictor.buffers()]
        return tensors[0].device if tensors else torch.device("cpu")

    @property
    def predictor_dtype(self) -> torch.dtype:
        """The dtype of the kNN memory or the heads: float32, even when the encoder runs in bfloat16."""
        return self._predictor_tensor().dtype

    def _predictor_tensor(self) -> torch.Tensor:
        """One tensor of the predictor (its device and dtype are the predictor's)."""
        return next(itertools.chain(self.predictor.parameters(), self.predictor.buffers()))

    def _raw_predictions(self, embeddings):
        return self.predictor(embeddings)

    def _tokens_from_log(self, log_tokens: torch.Tensor) -> torch.Tensor:
        # Clamp before expm1 so an untrained head cannot overflow to inf.
        return torch.expm1(log_tokens.clamp(min=0.0, max=20.0)).clamp(min=self.config.output_tokens_floor)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        embeddings: torch.FloatTensor | None = None,
        quality_labels: torch.FloatTensor | None = None,
        output_token_labels: torch.FloatTensor | None = None,
        **kwargs,
    ) -> CarrotRouterOutput:
        r"""
        Args:
            input_ids, attention_mask (`(batch, seq)`): the tokenized prompts.
            embeddings (`(batch, hidden)`, *optional*): precomputed embeddings instead of `input_ids`.
            quality_labels (`(batch, n_models)`, *optional*): observed scores in [0, 1], NaN where missing.
            output_token_labels (`(batch, n_models)`, *optional*): observed output tokens, NaN where missing.

        The loss is the masked BCE of the quality predictions plus the masked MSE of log(1 + tokens).
        """
        if embeddings is None:
            if input_ids is None:
                raise ValueError("forward() needs input_ids (with attention_mask) or precomputed embeddings.")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            embeddings = self.embed(input_ids, attention_mask)
        quality_raw, log_tokens = self._raw_predictions(embeddings)
        is_logits = self.config.predictor_kind == "mlp"
        quality = torch.sigmoid(quality_raw) if is_logits else quality_raw
        loss = None
        if quality_labels is not None or output_token_labels is not None:
            loss = carrot_loss(quality_raw, log_tokens, quality_labels, output_token_labels, is_logits)
        return CarrotRouterOutput(
            loss=loss, quality=quality, output_tokens=self._tokens_from_log(log_tokens), embeddings=embeddings
        )

    # ------------------------------------------------------------------------------- tokenizer

    @property
    def tokenizer(self):
        """The tokenizer saved with the router (loaded on first use from where the router came from)."""
        if self._tokenizer is None:
            with self._tokenizer_lock:
                if self._tokenizer is None:
                    source = self.name_or_path
                    try:
                        # trust_remote_code=False: the tokenizer is a stock one; without it, AutoTokenizer
                        # would ask again about the router's own auto_map in config.json.
                        verbosity = transformers_logging.get_verbosity()
                        transformers_logging.set_verbosity_error()  # silences a config-type notice
                        if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "tokenizer.json")):
                            raise OSError(f"{os.path.join(source, 'tokenizer.json')} does not exist")
                        try:
                            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
                        finally:
                            transformers_logging.set_verbosity(verbosity)
                    except Exception as error:
                        raise OSError(
                            f"This router has no tokenizer (looked in {source!r}: {error}). Save one next "
                            "to config.json (router.set_tokenizer(tok); router.save_pretrained(folder))."
                        ) from error
                    tokenizer = self.prompt_encoder.prepare_tokenizer(self, tokenizer, source)
                    self.prompt_encoder.check_loaded_tokenizer(self, tokenizer, source)
                    self._tokenizer = tokenizer
        return self._tokenizer

    def set_tokenizer(self, tokenizer) -> None:
        """Attach the tokenizer of the encoder; `save_pretrained` saves it next to the weights."""
        self._tokenizer = self.prompt_encoder.prepare_tokenizer(self, tokenizer, "the given tokenizer")

    # Filled in by the carrot_hub package when it is imported; this file travels to the Hub alone and
    # imports nothing from it. `model_card_writer(router, folder)` writes the CARROT model card
    # (README.md) next to the weights; `hub_publisher(router, repo_id, **options)` sends the router
    # and that card in one commit. Without the package both stay None and transformers' own
    # `save_pretrained` / `push_to_hub` apply.
    model_card_writer = None
    hub_publisher = None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """
        Save config, weights, remote code (`auto_map`) and the tokenizer into `save_directory`, and,
        with carrot_hub installed, the model card (README.md): the folder is a complete Hub repo.
        """
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.tokenizer.save_pretrained(save_directory)
            if self.model_card_writer is not None:
                self.model_card_writer(self, save_directory)
        return result

    def push_to_hub(self, repo_id: str, **options):
        """
        Publish the router to the Hub in one commit. With carrot_hub installed this sends the CARROT
        model card with it (candidates, dated prices, μ, usage, limitations) and accepts
        `eval_results=` (a `carrot evaluate` JSON, path or dict: model-index metrics in the card) and
        `plot=` (its cost–quality PNG), besides transformers' options (commit_message, private,
        token, revision, create_pr, tags); see `carrot_hub.router_publishing.push_router`.
        """
        if self.hub_publisher is not None:
            return self.hub_publisher(self, repo_id, **options)
        extra = sorted({"eval_results", "plot"} & set(options))
        if extra:
            raise TypeError(f"push_to_hub({', '.join(extra)}=...) needs the carrot_hub package: pip install carrot_hub.")
        return super().push_to_hub(repo_id, **options)

    # ---------------------------------------------------------------------------------- routing

    def encode(self, prompts: Sequence[str], batch_size: int = 64, progress: bool = False) -> PromptEncoding:
        """
        Tokenize and embed prompts, a chunk of them at a time (memory stays flat however many are
        given; see the encoder kind's [`PromptEncoder.encode`]): embeddings `(batch, hidden)` in
        input order, as ordinary tensors (usable to train heads on).
        """
        prompts = check_prompts(prompts)
        batch_size = check_positive_int(batch_size, "batch_size")
        return self.prompt_encoder.encode(self, prompts, batch_size, progress)

    @torch.inference_mode()
    def predict(self, prompts: Sequence[str], batch_size: int = 64, progress: bool = False) -> PromptPredictions:
        """Encode prompts and predict, for every candidate, quality and output tokens `(batch, n_models)`."""
        return self.prompt_encoder.predict(self, check_prompts(prompts), batch_size, progress)

    @torch.inference_mode()
    def predict_encoded(self, encoding: PromptEncoding, batch_size: int = 1024) -> PromptPredictions:
        """Predictions from precomputed embeddings (no encoder pass), in chunks of `batch_size`."""
        n_models = self.config.num_candidates
        parts = [[torch.zeros(0, n_models)], [torch.zeros(0, n_models)], [torch.zeros(0)], [torch.zeros(0, n_models)], [torch.zeros(0, n_models)]]
        device, dtype = self.predictor_device, self.predictor_dtype
        for start in range(0, encoding.embeddings.shape[0], batch_size):
            chunk = encoding.embeddings[start : start + batch_size].to(device, dtype)
            for part, value in zip(parts, self.predict_with_support(chunk)):
                part.append(value.float().cpu())
        # One chunk (e.g. a single prompt) needs no concatenation.
        quality, output_tokens, support, low, high = (part[1] if len(part) == 2 else torch.cat(part) for part in parts)
        return PromptPredictions(
            quality, output_tokens, encoding.input_tokens, list(encoding.truncated),
            candidate_models=list(self.config.candidate_models),
            support=support, quality_low=low, quality_high=high,
            fallback_embedding=list(encoding.fallback_embedding),
        )

    def _tokenize(self, prompts: list[str]) -> tuple[list, list[int], list[bool]]:
        """
        Prompts → token ids cut to `max_prompt_tokens`, input token counts (untruncated, at least one
        per `MAX_BYTES_PER_TOKEN` UTF-8 bytes), truncated flags (see [`PromptEncoder.tokenize`]).
        """
        return self.prompt_encoder.tokenize(self, prompts)

    def route(
        self,
        prompts: Sequence[str] | str,
        mu: float | None = None,
        prices: Mapping | None = None,
        allowed: Sequence[str] | None = None,
        max_cost: float | None = None,
        batch_size: int = 64,
        ood: str | None = None,
        options: RoutingOptions | None = None,
        latency: Mapping | None = None,
        max_latency_s: float | None = None,
        cached_input_tokens=None,
    ) -> RoutingDecision:
        """
        Choose a candidate LLM for every prompt.

        Args:
            prompts: a list of strings (a single string is routed as a list of one).
            mu: the quality/cost trade-off in [0, 1] for this call (0 = best predicted quality,
                1 = cheapest); defaults to `config.default_mu`.
            prices: per-call price overrides, `{model: {"input": $/M, "output": $/M}}` (either key
                may be left out) or `{model: (input, output)}`; other models keep their price.
            allowed: restrict the choice to these candidates.
            max_cost: exclude candidates whose predicted cost in dollars exceeds it; a prompt for
                which none fits gets its cheapest allowed candidate, flagged in `over_budget`.
            batch_size: prompts encoded per forward pass.
            ood: what to do with prompts out of distribution (support at or below
                `config.support_threshold`): `"predict"` routes on the predicted quality, `"prior"`
                on each candidate's prior quality, `"model:<name>"` sends them to that candidate
                (it must be allowed); defaults to `config.ood_policy`. `decision.ood_applied` says
                which prompts it changed.
            latency: per-call speed profile overrides, `{model: {"ttft_s": s, "tokens_per_s": t}}`
                (the config's `latency` otherwise); `decision.latency` is time to first token +
                predicted output tokens / tokens per second, NaN for models without a profile.
            max_latency_s: exclude candidates whose predicted latency exceeds it (those without a
                profile are never excluded); a prompt for which none fits gets its fastest allowed
                candidate, flagged in `over_latency`. Applied before `max_cost`.
            options: all of the above resolved once by [`routing_options`] (instead of them).
            cached_input_tokens: `(batch, n_models)` input tokens each candidate's upstream already
                holds in its prompt cache (a conversation's earlier turns on the model that answered
                them), charged at the `cached_input` price; None = nothing cached.

        Returns:
            A [`RoutingDecision`].
        """
        prompts = check_prompts(prompts)
        options = self._options_in_force(options, mu, prices, allowed, max_cost, ood, latency, max_latency_s)
        predictions = self.predict(prompts, batch_size=batch_size)
        return self._decide(predictions, options, cached_input_tokens)

    def decide(
        self,
        predictions: PromptPredictions,
        mu: float | None = None,
        prices: Mapping | None = None,
        allowed: Sequence[str] | None = None,
        max_cost: float | None = None,
        ood: str | None = None,
        options: RoutingOptions | None = None,
        latency: Mapping | None = None,
        max_latency_s: float | None = None,
        cached_input_tokens=None,
    ) -> RoutingDecision:
        """Like [`route`], from predictions already made by [`predict`]: changing μ or prices needs no re-encoding."""
        options = self._options_in_force(options, mu, prices, allowed, max_cost, ood, latency, max_latency_s)
        return self._decide(predictions, options, cached_input_tokens)

    def routing_options(
        self,
        mu: float | None = None,
        prices: Mapping | None = None,
        allowed: Sequence[str] | None = None,
        max_cost: float | None = None,
        ood: str | None = None,
        latency: Mapping | None = None,
        max_latency_s: float | None = None,
    ) -> RoutingOptions:
        """
        The [`RoutingOptions`] in force for this router, every value checked once (a one-line
        `ValueError` names the first bad one): what [`route`] describes, the config's defaults
        (`default_mu`, the price table, `ood_policy`) for what is left out. The error is a
        [`RoutingOptionError`], whose `option` names the refused option.
        """
        option = "mu"
        try:
            mu = check_mu(self.config.default_mu if mu is None else mu)
            option = "prices"
            input_prices, output_prices, cached_prices = self._price_lists(prices)
            option = "allowed"
            allowed_mask = self.resolve_allowed(allowed)
            option = "max_cost"
            if max_cost is not None:
                max_cost = check_number(max_cost, "max_cost", "a number of US dollars per prompt")
                if not math.isfinite(max_cost) or max_cost < 0:
                    raise ValueError(f"max_cost must be a finite number of dollars ≥ 0, got {max_cost!r}.")
            option = "ood"
            ood = self.resolve_ood(ood, allowed_mask)
            option = "latency"
            profile = self._latency_profile(latency)
            option = "max_latency_s"
            if max_latency_s is not None:
                max_latency_s = check_max_latency(max_latency_s)
        except ValueError as error:  # the same message, and which option it is about
            raise RoutingOptionError(str(error), option) from None
        names = tuple(self.config.candidate_models)
        return RoutingOptions(
            candidate_models=names,
            mu=mu,
            input_prices=tuple(input_prices),
            output_prices=tuple(output_prices),
            allowed=None if allowed_mask is None else tuple(n for n, ok in zip(names, allowed_mask.tolist()) if ok),
            max_cost=max_cost,
            ood=ood,
            cached_input_prices=None if all(p is None for p in cached_prices) else tuple(cached_prices),
            latency=profile,
            max_latency_s=max_latency_s,
        )

    def _latency_profile(self, latency: Mapping | None) -> tuple | None:
        """The config's latency profile with per-call `latency` overrides: `(ttft_s, tokens_per_s)` or None per candidate."""
        names = self.config.candidate_models
        # The config's profile was checked when the config was built (or by set_latency): read it as it is.
        profile = {name: (entry["ttft_s"], entry["tokens_per_s"]) for name, entry in (self.config.latency or {}).items()}
        if latency is not None:
            profile.update(check_latency_profile(latency, names))
        if not profile:
            return None
        return tuple(profile.get(name) for name in names)

    def set_latency(self, latency: Mapping | None) -> None:
        """Save a speed profile `{model: {"ttft_s", "tokens_per_s"}}` in the config (None removes it)."""
        if latency is not None:
            check_latency_profile(latency, self.config.candidate_models)
        self.config.latency = None if latency is None else {name: dict(entry) for name, entry in latency.items()}

    def _options_in_force(self, options, mu, prices, allowed, max_cost, ood, latency=None, max_latency_s=None) -> RoutingOptions:
        """`options` when given (checked to be this router's), else the options the separate values resolve to."""
        if options is None:
            return self.routing_options(mu, prices, allowed, max_cost, ood, latency, max_latency_s)
        if any(value is not None for value in (mu, prices, allowed, max_cost, ood, latency, max_latency_s)):
            raise ValueError("Pass either options= or mu/prices/allowed/max_cost/ood/latency/max_latency_s, not both.")
        if not isinstance(options, RoutingOptions):
            raise TypeError(f"options must be RoutingOptions (router.routing_options(...)), got {type(options).__name__}.")
        if list(options.candidate_models) != list(self.config.candidate_models):
            raise ValueError(
                f"These options were resolved for candidates {list(options.candidate_models)}, not this router's "
                f"{list(self.config.candidate_models)}: build them with this router's routing_options()."
            )
        return options

    def resolve_ood(self, ood: str | None, allowed_mask: torch.Tensor | None = None) -> str:
        """The ood policy in force (`config.ood_policy` when None), checked against the candidates and `allowed`."""
        policy = check_ood_policy(self.config.ood_policy if ood is None else ood, self.config.candidate_models)
        if policy.startswith("model:") and allowed_mask is not None:
            name = policy[len("model:") :]
            if not bool(allowed_mask[self.config.candidate_models.index(name)]):
                raise ValueError(
                    f"ood policy {policy!r} sends prompts out of distribution to {name!r}, which `allowed` excludes. "
                    "Allow it, or pass another ood policy ('predict', 'prior' or 'model:<an allowed candidate>')."
                )
        return policy

    def _check_predictions(self, predictions: PromptPredictions) -> None:
        """Raise `ValueError` when `predictions` were not made by a router with these candidates."""
        names = self.config.candidate_models
        made_for = predictions.candidate_models
        if made_for is not None and list(made_for) != list(names):
            raise ValueError(
                f"These predictions were made by a router with candidates {list(made_for)}, not this "
                f"router's {list(names)}: call predict() on this router."
            )
        batch = predictions.quality.shape[0] if predictions.quality.ndim == 2 else -1
        shapes_agree = (
            predictions.quality.shape == (batch, len(names))
            and predictions.output_tokens.shape == (batch, len(names))
            and predictions.input_tokens.shape == (batch,)
        )
        if not shapes_agree:
            raise ValueError(
                f"The predictions have quality {tuple(predictions.quality.shape)}, output_tokens "
                f"{tuple(predictions.output_tokens.shape)} and input_tokens {tuple(predictions.input_tokens.shape)}; "
                f"this router needs (batch, {len(names)}), (batch, {len(names)}) and (batch,): "
                "were they made by another router? Call predict() on this router."
            )

    def _decide(self, predictions: PromptPredictions, options: RoutingOptions, cached_input_tokens=None) -> RoutingDecision:
        self._check_predictions(predictions)
        mu, max_cost, ood = options.mu, options.max_cost, options.ood
        input_prices, output_prices = options.price_tensors()
        allowed_mask = options.allowed_mask()
        n = len(predictions)
        cached = self._check_cached_tokens(cached_input_tokens, n)
        cost = predicted_cost(
            predictions.input_tokens, predictions.output_tokens, input_prices, output_prices,
            cached, None if cached is None else options.cached_price_tensor(),
        )
        latency = predicted_latency(predictions.output_tokens, *options.latency_tensors())
        over_latency = torch.zeros(n, dtype=torch.bool)
        if options.max_latency_s is not None:
            allowed_mask, over_latency = latency_mask(latency, options.max_latency_s, allowed_mask)
        support = predictions.support if predictions.support is not None else torch.full((n,), math.nan)
        known = ~torch.isnan(support)
        out_of_distribution = known & (support <= self.config.support_threshold)
        applied = torch.zeros(n, dtype=torch.bool)
        quality = predictions.quality
        if ood == "prior" and self.reliability is not None and bool(out_of_distribution.any()):
            prior = self.reliability.prior.to(quality.device, quality.dtype)[None, :]
            quality = torch.where(out_of_distribution[:, None], prior, quality)
            applied = out_of_distribution
        indices, utility, over_budget = choose_candidates(
            quality, cost, mu, self.config.cost_scale, allowed_mask, max_cost
        )
        if ood.startswith("model:") and bool(out_of_distribution.any()):
            column = self.config.candidate_models.index(ood[len("model:") :])
            indices = torch.where(out_of_distribution, torch.full_like(indices, column), indices)
            if max_cost is not None:
                over_budget = torch.where(out_of_distribution, cost[:, column] > max_cost, over_budget)
            if options.max_latency_s is not None:
                over_latency = torch.where(out_of_distribution, latency[:, column] > options.max_latency_s, over_latency)
            applied = out_of_distribution
        in_distribution = [
            None if not is_known else not is_out for is_known, is_out in zip(known.tolist(), out_of_distribution.tolist())
        ]
        names = self.config.candidate_models
        return RoutingDecision(
            models=[names[i] for i in indices.tolist()],
            model_indices=indices,
            candidate_models=list(names),
            quality=predictions.quality,
            output_tokens=predictions.output_tokens,
            input_tokens=predictions.input_tokens,
            cost=cost,
            utility=utility,
            mu=mu,
            prices=options.prices,
            truncated=list(predictions.truncated),
            over_budget=over_budget.tolist(),
            support=support,
            in_distribution=in_distribution,
            quality_low=predictions.quality_low,
            quality_high=predictions.quality_high,
            ood_policy=ood,
            ood_applied=applied.tolist(),
            fallback_embedding=list(predictions.fallback_embedding),
            options=options,
            latency=latency.float(),
            over_latency=over_latency.tolist(),
        )

    def _check_cached_tokens(self, cached_input_tokens, n: int) -> torch.Tensor | None:
        """`cached_input_tokens` as a `(batch, n_models)` float64 tensor of finite counts ≥ 0, or None."""
        if cached_input_tokens is None:
            return None
        try:
            cached = torch.as_tensor(cached_input_tokens, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError("cached_input_tokens must be numbers of tokens, (batch, n_models).") from None
        shape = (n, self.config.num_candidates)
        if tuple(cached.shape) != shape:
            raise ValueError(f"cached_input_tokens has shape {tuple(cached.shape)}; this batch needs {shape} "
                             "(one count per prompt and candidate, 0 where nothing is cached).")
        if not bool(torch.isfinite(cached).all()) or bool((cached < 0).any()):
            raise ValueError("cached_input_tokens must be finite token counts ≥ 0.")
        return cached

    # ----------------------------------------------------------------------------- kNN memory

    def remember(
        self,
        prompts: Sequence[str] | str,
        model: str | Sequence[str],
        scores: Sequence[float] | float,
        output_tokens: Sequence[float | None] | float | None = None,
        batch_size: int = 64,
    ) -> dict:
        """
        Add observed cells to a kNN router's memory, without retraining. A prompt the memory already
        holds (a training prompt, or one remembered before: found by its text's key, `prompt_key_of`)
        gets its row's cell for `model` set; any other prompt joins the memory as a new row where only
        its model's cell is observed (the other candidates' cells stay unobserved, so their
        predictions ignore the row). Only new prompts are encoded, all in one pass, so a batch of
        labels costs one encoder batch at most. A cell labelled again takes the latest label (also
        within one call: the later entry wins). `save_pretrained` keeps the result.

        Memory is bounded by `config.knn_memory_cap` (None: the training rows plus
        `DEFAULT_MAX_REMEMBERED_ROWS`); past it the oldest remembered rows are evicted first, training
        rows only when the cap is below their number (see [`CarrotKNNMemory.append`]). Memory costs
        4·(hidden + 4·n_models) + 8 bytes per row (1.7 kB for all-MiniLM-L6-v2 and 11 candidates).

        Args:
            prompts: `n` prompts (a single string counts as one).
            model: the candidate that answered, one name for all prompts or one per prompt.
            scores: `n` observed qualities in [0, 1] (a single number for a single prompt).
            output_tokens: `n` observed output-token counts ≥ 0; None (or a None entry) leaves the
                token cell unobserved.
            batch_size: prompts encoded per forward pass.

        Returns:
            `{"added", "filled", "evicted", "memory_size", "remembered_rows"}`: `added` new rows,
            `filled` labels written into rows the memory already held.
        """
        if self.config.predictor_kind != "knn":
            raise TypeError(
                "remember() grows a kNN router's memory; this router predicts with MLP heads, which would need "
                "fine-tuning on the new cells. Train a router on the outcome log instead (carrot train --data LOG_DIR), "
                "or serve a kNN router."
            )
        prompts = check_prompts(prompts)
        n = len(prompts)
        models = [model] * n if isinstance(model, str) else list(model) if isinstance(model, Sequence) else None
        if models is None or len(models) != n:
            raise ValueError(f"model must be one candidate name or one per prompt ({n}), got {model!r:.80}.")
        columns = [self._candidate_index(name, what="remember()") for name in models]
        scores = _observed_values(scores, n, "scores", upper=1.0)
        tokens = [None] * n if output_tokens is None else _observed_values(output_tokens, n, "output_tokens", allow_none=True)
        memory = self.predictor
        if n == 0:
            return {"added": 0, "filled": 0, "evicted": 0, "memory_size": self.config.knn_memory_size,
                    "remembered_rows": self.config.knn_remembered_rows}
        keys = [prompt_key_of(prompt) for prompt in prompts]
        token_values = [math.nan if t is None else float(t) for t in tokens]
        # One lock for lookup, encoding and growth: two calls must not both add a row for one new prompt.
        with self._remember_lock:
            if not self.config.knn_prompt_keys:
                self.config.knn_prompt_keys = True
                memory.keep_prompt_keys()
            rows = memory.rows_of(keys)
            known = [i for i in range(n) if rows[i] is not None]
            new_rows: dict[int, int] = {}  # key → index among the new rows, in first-seen order
            first_prompt: list[str] = []
            for i in range(n):
                if rows[i] is None and keys[i] not in new_rows:
                    new_rows[keys[i]] = len(first_prompt)
                    first_prompt.append(prompts[i])
            if known:
                memory.fill_cells(
                    torch.tensor([rows[i] for i in known]), torch.tensor([columns[i] for i in known]),
                    torch.tensor([scores[i] for i in known], dtype=torch.float32),
                    torch.tensor([token_values[i] for i in known], dtype=torch.float32),
                )
            evicted = 0
            if first_prompt:
                embeddings = self.encode(first_prompt, batch_size=batch_size).embeddings
                n_new, n_models = len(first_prompt), self.config.num_candidates
                quality = torch.full((n_new, n_models), math.nan)
                token_cells = torch.full((n_new, n_models), math.nan)
                for i in range(n):  # in order: a later label of the same cell wins
                    if rows[i] is None:
                        quality[new_rows[keys[i]], columns[i]] = scores[i]
                        if not math.isnan(token_values[i]):
                            token_cells[new_rows[keys[i]], columns[i]] = token_values[i]
                cap = self.config.knn_memory_cap
                if cap is None:
                    cap = self.config.knn_memory_size - self.config.knn_remembered_rows + DEFAULT_MAX_REMEMBERED_ROWS
                remembered, evicted = memory.append(embeddings, quality, token_cells, self.config.knn_remembered_rows,
                                                    cap, prompt_keys=torch.tensor(list(new_rows), dtype=torch.int64))
                self.config.knn_memory_size = int(memory.embeddings.shape[0])
                self.config.knn_remembered_rows = int(remembered)
        return {"added": len(first_prompt), "filled": len(known), "evicted": int(evicted),
                "memory_size": self.config.knn_memory_size, "remembered_rows": self.config.knn_remembered_rows}

    # ----------------------------------------------------------------------------------- prices

    def resolve_prices(self, overrides: Mapping | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The price table in force with `overrides` applied: input and output $/M tokens, `(n_models,)`
        float64 each (float64 so that prices round-trip exactly into decisions and config.json).
        """
        input_prices, output_prices, _ = self._price_lists(overrides)
        return (
            torch.tensor(input_prices, dtype=torch.float64),
            torch.tensor(output_prices, dtype=torch.float64),
        )

    def _price_lists(self, overrides: Mapping | None) -> tuple[list[float], list[float], list[float | None]]:
        """
        The price table with `overrides` applied (checked): input, output and cached-input $/M tokens
        per candidate (cached None where the candidate has no cached price).
        """
        input_prices = list(self.config.input_price_per_million)
        output_prices = list(self.config.output_price_per_million)
        cached_prices = list(self.config.cached_input_price_per_million or [None] * len(input_prices))
        if overrides is not None:
            if not isinstance(overrides, Mapping):
                raise ValueError(
                    "prices must be a mapping {model: {'input': $/M, 'output': $/M}}, "
                    f"got {type(overrides).__name__}."
                )
            for name, price in overrides.items():
                column = self._candidate_index(name, what="prices")
                new_input, new_output, new_cached = _parse_price_entry(name, price)
                if new_input is not None:
                    input_prices[column] = new_input
                if new_output is not None:
                    output_prices[column] = new_output
                if new_cached is not None:
                    cached_prices[column] = new_cached
        for name, p_in, p_cached in zip(self.config.candidate_models, input_prices, cached_prices):
            if p_cached is not None and p_cached > p_in:
                warn_cached_above_input(name, p_cached, p_in)
        return ([float(p) for p in input_prices], [float(p) for p in output_prices],
                [None if p is None else float(p) for p in cached_prices])

    def set_prices(self, prices: Mapping, recorded_on: str | None = None) -> None:
        """Change the price table permanently (save with `save_pretrained`); unnamed models keep theirs."""
        input_prices, output_prices = self.resolve_prices(prices)
        cached_prices = self._price_lists(prices)[2]
        changed = [
            name
            for name, p_in, p_out, new_in, new_out in zip(
                self.config.candidate_models, self.config.input_price_per_million,
                self.config.output_price_per_million, input_prices.tolist(), output_prices.tolist(),
            )
            if (p_in, p_out) != (new_in, new_out)
        ]
        self.config.input_price_per_million = [float(p) for p in input_prices.tolist()]
        self.config.output_price_per_million = [float(p) for p in output_prices.tolist()]
        self.config.cached_input_price_per_million = None if all(p is None for p in cached_prices) else cached_prices
        if changed and getattr(self.config, "prices_source", None):
            self.config.prices_source = f"{self.config.prices_source}; since changed by hand for {', '.join(changed)}"
        if recorded_on is not None:
            self.config.prices_recorded_on = recorded_on

    def resolve_allowed(self, allowed: Sequence[str] | None) -> torch.Tensor | None:
        """`allowed` names → `(n_models,)` bool mask, or None when every candidate is allowed."""
        if allowed is None:
            return None
        if isinstance(allowed, str):
            allowed = [allowed]
        mask = torch.zeros(self.config.num_candidates, dtype=torch.bool)
        for name in allowed:
            mask[self._candidate_index(name, what="allowed")] = True
        if not mask.any():
            raise ValueError("allowed is empty: name at least one candidate model.")
        return mask

    def _candidate_index(self, name, what: str) -> int:
        try:
            return self.config.candidate_models.index(name)
        except ValueError:
            raise ValueError(
                f"{what} names {name!r}, which is not a candidate of this router. "
                f"Known candidates: {', '.join(self.config.candidate_models)}."
            ) from None

    # ------------------------------------------------------------------------------ consistency

    def check_consistency(self, source: str = "this router") -> None:
        """
        Raise `ValueError` if the weights' number of candidates differs from the config's price table,
        or if the predictor's weights (kNN memory or heads) hold NaN or infinite values.
        """
        n_models = self.config.num_candidates
        if isinstance(self.predictor, CarrotKNNMemory):
            width = self.predictor.quality.shape[1]
        else:
            width = self.predictor.quality[-1].out_features
        if width != n_models:
            raise ValueError(
                f"The router at {source} predicts {width} candidates but its config lists {n_models} "
                f"({', '.join(self.config.candidate_models)}). The price table must match the heads."
            )
        for name, tensor in self.predictor.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(
                    f"The router at {source}: model.safetensors holds NaN or infinite values in predictor.{name}; "
                    "its predictions would not be numbers. Save or download the router again."
                )
        if self.reliability is not None and self.reliability.prior.shape[0] != n_models:
            raise ValueError(
                f"The router at {source} has calibration for {self.reliability.prior.shape[0]} candidates but its "
                f"config lists {n_models}. Add or remove candidates with `carrot add-model` / `carrot remove-model`."
            )


def carrot_loss(quality_raw, log_tokens, quality_labels, output_token_labels, is_logits: bool) -> torch.Tensor:
    """
    Masked training loss: BCE of quality against observed scores (NaN = missing) plus MSE of
    log(1 + output tokens). All inputs `(batch, n_models)`.
    """
    loss = quality_raw.new_zeros(())
    if quality_labels is not None:
        observed = ~torch.isnan(quality_labels)
        target = torch.nan_to_num(quality_labels, nan=0.0).to(quality_raw.dtype)
        if is_logits:
            per_cell = F.binary_cross_entropy_with_logits(quality_raw, target, reduction="none")
        else:
            per_cell = F.binary_cross_entropy(quality_raw.clamp(1e-6, 1 - 1e-6), target, reduction="none")
        loss = loss + (per_cell * observed).sum() / observed.sum().clamp(min=1)
    if output_token_labels is not None:
        observed = ~torch.isnan(output_token_labels)
        target = torch.log1p(torch.nan_to_num(output_token_labels, nan=0.0).clamp(min=0)).to(log_tokens.dtype)
        loss = loss + (((log_tokens - target) ** 2) * observed).sum() / observed.sum().clamp(min=1)
    return loss


def prompt_has_content(prompt: str) -> bool:
    """Whether `prompt` holds anything but whitespace, separators, control and zero-width characters."""
    position, end = 0, len(prompt)
    while True:
        position = _NO_CONTENT_RUN.match(prompt, position).end()
        if position == end:
            return False
        if unicodedata.category(prompt[position]) not in _NO_CONTENT_CATEGORIES:
            return True
        position += 1  # a rarer no-content character: on to the next run


def prompt_problem(prompt) -> str | None:
    """
    Why the router cannot route `prompt`, as a clause that follows "prompt N" ("is empty (…)"), or
    None when it can. The one definition of a routable prompt: `check_prompts` (so `route`,
    `predict`, `encode`) applies it, and the gateway asks it of each request before batching.
    """
    if not isinstance(prompt, str):
        return f"is a {type(prompt).__name__}, not a string: {prompt!r:.80}"
    if not prompt_has_content(prompt):
        return ("is empty (nothing but whitespace, control or zero-width characters): there is nothing to route. "
                "Remove it or give it text")
    surrogate = None if prompt.isascii() else _SURROGATE.search(prompt)  # isascii() is O(1) on a str
    if surrogate is not None:
        return (f"holds a lone surrogate (U+{ord(surrogate.group()):04X} at character {surrogate.start()}), "
                "which is not text and cannot be tokenized. Send valid UTF-8 text")
    return None


def check_prompts(prompts) -> list[str]:
    """Return prompts as a list of strings with content, or raise naming the first bad position."""
    if isinstance(prompts, str):
        prompts = [prompts]
    elif prompts is None or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}.")
    prompts = list(prompts)
    for position, prompt in enumerate(prompts):
        problem = prompt_problem(prompt)
        if problem is not None:
            raise (TypeError if not isinstance(prompt, str) else ValueError)(f"prompt {position} {problem}.")
    return prompts


def _observed_values(values, n: int, what: str, upper: float | None = None, allow_none: bool = False) -> list:
    """`n` finite numbers ≥ 0 (and ≤ `upper`), None allowed when `allow_none`; a one-line error otherwise."""
    if isinstance(values, (int, float)) and not isinstance(values, bool) and n == 1:
        values = [values]
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "tolist"):
        raise ValueError(f"{what} must be a list of {n} numbers, got {type(values).__name__}.")
    values = list(values.tolist() if hasattr(values, "tolist") else values)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} values for {n} prompts; give one per prompt.")
    bound = f"in [0, {upper:g}]" if upper is not None else "≥ 0"
    for position, value in enumerate(values):
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (upper is not None and value > upper):
            raise ValueError(f"{what}[{position}] is {value!r}; it must be a finite number {bound}.")
    return [None if value is None else float(value) for value in values]


def warn_cached_above_input(name: str, cached: float, input_price: float) -> None:
    """
    A cached-input price above the input price is allowed but warned about: a cache *read* that
    costs more than no cache is almost always a typo, yet some providers do charge more than the
    input price to *write* a cache (Anthropic: 1.25 times), and a table may hold that price knowingly.
    """
    warnings.warn(
        f"The cached_input price of {name!r} (${cached:g}/M) is above its input price (${input_price:g}/M): "
        "a cached read usually costs less. Kept as given; check the price table if this is a typo.",
        UserWarning,
        stacklevel=4,
    )


def _parse_price_entry(name: str, price) -> tuple[float | None, float | None, float | None]:
    new_cached = None
    if isinstance(price, Mapping):
        unknown = set(price) - {"input", "output", "cached_input"}
        if unknown:
            raise ValueError(
                f"price of {name!r} has unknown keys {sorted(unknown)}; use 'input', 'output' and (optionally) 'cached_input'."
            )
        new_input, new_output, new_cached = price.get("input"), price.get("output"), price.get("cached_input")
    elif isinstance(price, Sequence) and not isinstance(price, str) and len(price) == 2:
        new_input, new_output = price
    else:
        raise ValueError(
            f"price of {name!r} must be {{'input': $/M, 'output': $/M}} or (input, output), got {price!r}."
        )
    return (
        None if new_input is None else check_price(new_input, f"input price of {name!r}"),
        None if new_output is None else check_price(new_output, f"output price of {name!r}"),
        None if new_cached is None else check_price(new_cached, f"cached_input price of {name!r}"),
    )


__all__ = [
    "CarrotRouter",
    "CarrotPreTrainedModel",
    "CarrotMLPHeads",
    # re-exported from the siblings, for code that imports them from here
    "CarrotRouterOutput",
    "CarrotReliability",
    "CarrotKNNMemory",
    "CarrotStaticEncoder",
    "CachedWordPieceTokenizer",
    "PromptEncoder",
    "StaticPromptEncoder",
    "TransformerPromptEncoder",
    "MAX_BYTES_PER_TOKEN",
    "TOKENIZE_CHUNK_PROMPTS",
    "pad_batch",
    "RoutingDecision",
    "RoutingOptions",
    "RoutingOptionError",
    "PromptPredictions",
    "PromptEncoding",
    "DOLLARS_PER_MILLION",
    "choose_candidates",
    "carrot_utility",
    "predicted_cost",
    "mean_pool",
    "mean_of_largest",
    "top_k_mean_similarity",
    "interpolate_monotone",
]
