"""CARROT with a fine-tuned encoder (the CARROT-RoBERTa recipe on our BERT-family encoder).

The encoder and both heads (quality BCE + log-token MSE, `CarrotRouter.forward`'s loss) are trained
together through an `accelerate` loop: the same code runs on CPU, on one GPU, or on many with
`accelerate launch -m training.train --kind finetune ...`. Mixed precision is bf16 (or fp16) on GPUs
and off on CPU.

Resumable to the same result: the state (weights as safetensors, optimizer, scheduler) is saved with
`accelerator.save_state` every `checkpoint_every` optimizer steps into `<output_dir>.checkpoints/`;
a run started again with the same arguments continues from the last complete checkpoint. The batch
order of every epoch is a fixed function of (seed, epoch), and dropout is reseeded from (seed, step,
process), so a resumed run replays exactly the steps the interrupted one would have taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers.utils.logging import tqdm

from carrot_hub.building import default_cost_scale, fit_support_and_prior, new_router
from carrot_hub.reliability import MIN_VALIDATION_PROMPTS, fit_validation_reliability
from carrot_hub.modeling_carrot import pad_batch

from .heads import split_train_validation, train_heads_router
from .output import check_output_dir, save_router_atomically
from .prepare import check_training_table, table_card_fields, training_data_label

RUN_FILE = "run.json"
STATE_FILE = "training_state.json"


class PromptRows(Dataset):
    """Tokenized prompts with their score and output-token rows (`(n_models,)` each, NaN = missing)."""

    def __init__(self, token_ids: list[list[int]], scores: torch.Tensor, output_tokens: torch.Tensor):
        self.token_ids, self.scores, self.output_tokens = token_ids, scores, output_tokens

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, index: int):
        return self.token_ids[index], self.scores[index], self.output_tokens[index]


class EpochPermutationSampler(Sampler):
    """A shuffle that depends only on (seed, epoch): resuming mid-epoch replays the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def make_collate(pad_id: int):
    def collate(rows):
        input_ids, attention_mask = pad_batch([ids for ids, _, _ in rows], pad_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "quality_labels": torch.stack([scores for _, scores, _ in rows]),
            "output_token_labels": torch.stack([tokens for _, _, tokens in rows]),
        }

    return collate


def default_mixed_precision() -> str:
    """bf16 on GPUs that support it, fp16 on other GPUs, "no" on CPU."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def checkpoint_dir_for(output_dir) -> Path:
    """Where the checkpoints of a run writing `output_dir` live: the sibling `<output_dir>.checkpoints`."""
    output_dir = Path(output_dir).absolute()
    return output_dir.parent / f"{output_dir.name}.checkpoints"


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step (`checkpoint-<step>` holding `training_state.json`)."""
    if not checkpoint_dir.is_dir():
        return None
    complete = [p for p in checkpoint_dir.glob("checkpoint-*") if (p / STATE_FILE).exists()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _fingerprint(table, run_settings: dict) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(run_settings, sort_keys=True, default=str).encode())
    for prompt in table.prompts:
        digest.update(prompt.encode("utf-8"))
    digest.update(table.scores.tobytes())
    return digest.hexdigest()


def train_finetuned_router(
    train_table,
    output_dir,
    validation_table=None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    encoder: str | None = None,
    epochs: int = 3,
    max_steps: int | None = None,
    batch_size: int = 16,
    encoder_lr: float = 3e-5,
    head_lr: float = 1e-3,
    weight_decay: float = 1e-2,
    warmup_ratio: float = 0.1,
    hidden: int = 256,
    dropout: float = 0.1,
    init_heads: str = "frozen",
    checkpoint_every: int = 100,
    keep_checkpoints: bool = False,
    mixed_precision: str | None = None,
    cost_scale: float | None = None,
    overwrite: bool = False,
    drop_unscored_models: bool = False,
    cache_dir=None,
    progress: bool = True,
    on_step=None,
    **config_fields,
):
    """
    Fine-tune the encoder with both heads and save the router into `output_dir` (atomically).

    Args:
        train_table: a `RoutingTable` with prices.
        output_dir: the router folder to write; checkpoints go to `<output_dir>.checkpoints/` and are
            removed after a successful run unless `keep_checkpoints`.
        validation_table: prompts scored after every epoch (the loss is reported, not used to stop);
            when None a seeded `validation_fraction` of `train_table` is held out.
        seed: seeds the split, the heads' initialisation, the batch order and dropout.
        encoder: folder or Hub id of a BERT-family encoder (default all-MiniLM-L6-v2).
        epochs / max_steps: training length (max_steps, in optimizer steps, wins when given).
        batch_size: prompts per step and process.
        encoder_lr, head_lr: AdamW learning rates of the encoder and of the heads (linear warm-up
            over `warmup_ratio` of the steps, then linear decay to 0).
        hidden, dropout: the heads' width and dropout.
        init_heads: `"frozen"` starts the heads from heads trained on the frozen encoder (faster,
            steadier convergence: the encoder is not pushed around by random heads at the start);
            `"random"` starts them from scratch.
        checkpoint_every: optimizer steps between checkpoints (0 disables them).
        mixed_precision: `"no"`, `"fp16"`, `"bf16"`; default bf16/fp16 on GPU, "no" on CPU.
        cost_scale: dollars per quality point at μ = 0.5 (default: `default_cost_scale(train_table)`).
        overwrite: replace a router already in `output_dir`.
        on_step: optional `callable(step)` after each optimizer step (and its checkpoint).
        config_fields: further `CarrotConfig` fields (e.g. `max_prompt_tokens`, `truncation_side`).

    Returns:
        `(router, report)`.
    """
    from accelerate import Accelerator

    output_dir = check_output_dir(output_dir, overwrite=overwrite)
    train_table = check_training_table(train_table, drop_unscored_models=drop_unscored_models)
    if init_heads not in ("frozen", "random"):
        raise ValueError(f"init_heads must be 'frozen' or 'random', got {init_heads!r}.")
    cost_scale = float(cost_scale) if cost_scale is not None else default_cost_scale(train_table)
    accelerator = Accelerator(mixed_precision=mixed_precision or default_mixed_precision())

    if validation_table is None:
        train_rows, validation_rows = split_train_validation(len(train_table), validation_fraction, seed)
        fit_table, validation_table = train_table.subset(train_rows), train_table.subset(validation_rows)
    else:
        fit_table, validation_table = train_table, validation_table.select_models(train_table.models)

    router_fields = dict(
        predictor_kind="mlp",
        cost_scale=cost_scale,
        head_hidden_size=hidden,
        head_dropout=dropout,
        training_data=training_data_label(train_table),
        **{**table_card_fields(train_table), **config_fields},
    )
    router = new_router(train_table.models, train_table.prices, encoder=encoder, **router_fields)
    run_settings = {
        "encoder": encoder, "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
        "encoder_lr": encoder_lr, "head_lr": head_lr, "weight_decay": weight_decay,
        "warmup_ratio": warmup_ratio, "seed": seed, "init_heads": init_heads,
        "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        "validation_fraction": validation_fraction, "router_fields": router_fields,
    }
    fingerprint = _fingerprint(train_table, run_settings)
    checkpoint_dir = checkpoint_dir_for(output_dir)
    resume_from = latest_checkpoint(checkpoint_dir)
    if resume_from is not None:
        recorded = json.loads((checkpoint_dir / RUN_FILE).read_text()).get("fingerprint")
        if recorded != fingerprint:
            raise ValueError(
                f"The checkpoints in {checkpoint_dir} come from a run with other data or settings; "
                "delete that folder to start afresh, or rerun with the original arguments to resume."
            )

    heads_report = None
    if init_heads == "frozen" and resume_from is None:
        frozen_router, heads_report = train_heads_router(
            fit_table, validation_table=validation_table, seed=seed, encoder=encoder, hidden=hidden,
            dropout=dropout, cost_scale=cost_scale, cache_dir=cache_dir, progress=progress and accelerator.is_main_process,
            reliability_folds=0,  # the fine-tuned encoder moves the embeddings: support is refitted below
            **config_fields,
        )
        router.predictor.load_state_dict(frozen_router.predictor.state_dict())
        del frozen_router
    else:
        torch.manual_seed(seed)
        router.predictor.apply(router._init_weights)

    pad_id = router.tokenizer.pad_token_id or 0

    def rows(table):
        token_ids, _, _ = router._tokenize(list(table.prompts))
        return PromptRows(
            token_ids,
            torch.as_tensor(table.scores, dtype=torch.float32),
            torch.as_tensor(table.output_tokens, dtype=torch.float32),
        )

    train_rows_data = rows(fit_table)
    sampler = EpochPermutationSampler(len(train_rows_data), seed)
    loader = DataLoader(train_rows_data, batch_size=batch_size, sampler=sampler, collate_fn=make_collate(pad_id))
    validation_loader = DataLoader(rows(validation_table), batch_size=64, collate_fn=make_collate(pad_id))

    encoder_params = [p for n, p in router.named_parameters() if n.startswith("encoder.")]
    head_params = [p for n, p in router.named_parameters() if not n.startswith("encoder.")]
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": encoder_lr}, {"params": head_params, "lr": head_lr}],
        weight_decay=weight_decay,
    )
    router.train()
    model, optimizer, loader = accelerator.prepare(router, optimizer, loader)
    steps_per_epoch = len(loader)
    total_steps = max_steps if max_steps is not None else epochs * steps_per_epoch
    if total_steps < 1:
        raise ValueError("Nothing to train: epochs and max_steps give 0 optimizer steps.")
    warmup = int(warmup_ratio * total_steps)

    def schedule(step):
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scheduler = accelerator.prepare(scheduler)

    step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        step = json.loads((resume_from / STATE_FILE).read_text())["step"]
        accelerator.print(f"Resuming from {resume_from} (step {step} of {total_steps}).")
    elif accelerator.is_main_process and checkpoint_every:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir / RUN_FILE).write_text(json.dumps({"fingerprint": fingerprint, **run_settings}, default=str))

    history = []
    bar = tqdm(total=total_steps, initial=step, desc="fine-tuning", unit="step", disable=not (progress and accelerator.is_main_process))
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        loader.set_epoch(epoch)
        model.train()
        for batch_index, batch in enumerate(loader):
            if batch_index < skip:
                continue
            # Dropout depends on (seed, step, process) only, so a resumed run draws the same masks.
            torch.manual_seed(seed * 1_000_003 + step * 101 + accelerator.process_index)
            with accelerator.autocast():
                loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch + 1)
            if checkpoint_every and (step % checkpoint_every == 0 or step == total_steps):
                _save_checkpoint(accelerator, checkpoint_dir, step)
            if on_step is not None:
                on_step(step)
            if step >= total_steps:
                break
        if step % steps_per_epoch == 0 or step >= total_steps:
            history.append({"epoch": epoch + 1, "step": step, "validation_loss": _validation_loss(accelerator, model, validation_loader)})
            accelerator.print(f"epoch {epoch + 1}: validation loss {history[-1]['validation_loss']:.4f}")
    bar.close()

    accelerator.wait_for_everyone()
    router = accelerator.unwrap_model(model).float().cpu().eval()
    # Support is measured in the fine-tuned encoder's space: embed the training prompts once more.
    fit_embeddings = router.encode(list(fit_table.prompts), batch_size=64, progress=progress and accelerator.is_main_process)
    fit_support_and_prior(router, fit_table, embeddings=fit_embeddings.embeddings)
    reliability = None
    if len(validation_table) >= MIN_VALIDATION_PROMPTS:  # calibration and ood choices from prompts it never saw
        validation_embeddings = router.encode(
            list(validation_table.prompts), batch_size=64, progress=progress and accelerator.is_main_process
        ).embeddings
        reliability = fit_validation_reliability(router, fit_embeddings.embeddings, validation_table, validation_embeddings, seed=seed)
    report = {
        "predictor_kind": "mlp",
        "encoder_fine_tuned": True,
        "n_train_prompts": len(fit_table),
        "n_validation_prompts": len(validation_table),
        "candidate_models": list(train_table.models),
        "cost_scale": cost_scale,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "resumed_from": str(resume_from) if resume_from is not None else None,
        "validation_history": history,
        "frozen_heads": heads_report,
        "reliability": reliability,
        **{k: v for k, v in run_settings.items() if k != "router_fields"},
    }
    if accelerator.is_main_process:
        save_router_atomically(router, output_dir, overwrite=overwrite, extra_json={"training_report.json": report})
        if not keep_checkpoints and checkpoint_dir.exists():
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return router, report


def _save_checkpoint(accelerator, checkpoint_dir: Path, step: int) -> None:
    """`accelerator.save_state` into a staging folder, then rename: a checkpoint is complete or absent."""
    final = checkpoint_dir / f"checkpoint-{step:07d}"
    staging = checkpoint_dir / f".staging-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for older in checkpoint_dir.glob("checkpoint-*"):
            if older != final:
                shutil.rmtree(older, ignore_errors=True)
    accelerator.wait_for_everyone()


@torch.no_grad()
def _validation_loss(accelerator, model, loader) -> float:
    """Mean loss over the validation prompts (every process scores them all; they are few)."""
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss = unwrapped(**batch).loss
        total += float(loss) * batch["input_ids"].shape[0]
        count += batch["input_ids"].shape[0]
    unwrapped.train()
    return total / max(1, count)
