"""The training loop both trainers share, top to bottom.

A task (clip or audio) supplies the modules, a loss for a batch of item indices and a validation
score; this loop does the rest: a seeded shuffle per epoch, AdamW with a one-cycle schedule, mixed
precision on CUDA, validation after every epoch, early stopping, the best weights written to the
output folder as a model directory, and checkpoints for resuming.

Everything random is derived from (seed, epoch) or (seed, step), never from hidden generator state,
so a run resumed from a checkpoint continues exactly as it would have without the interruption.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from index.atomic import write_atomic, write_bytes_atomic
from retrieval.errors import TrainingInterrupted, TrainingStateError

CHECKPOINT = "checkpoint"
HISTORY = "training.json"


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 0.1  # fraction of all steps spent warming the learning rate up
    seed: int = 0
    patience: int = 4  # epochs without a better validation score before stopping
    val_fraction: float = 0.05  # of the train split, when the pairs have no "val" split
    device: str | None = None  # None: CUDA when present
    amp: bool = True  # bfloat16 autocast, CUDA only
    max_minutes: float | None = None  # stop (keeping the best weights) after this much training
    checkpoint_seconds: float = 60.0
    augment: bool = True

    def resume_key(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (the time budget and device may change)."""
        key = asdict(self)
        for name in ("device", "max_minutes", "checkpoint_seconds", "patience"):
            key.pop(name)
        return key


@dataclass
class TrainEvent:
    kind: str  # "step" | "epoch" | "checkpoint"
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float = float("nan")
    lr: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    improved: bool = False


@dataclass
class FitResult:
    out: Path
    best_score: float
    best_epoch: int
    epochs_run: int
    steps: int
    seconds: float
    stopped: str  # "completed" | "early stopping" | "time budget"
    history: list[dict[str, Any]]


class Task(Protocol):
    modules: dict[str, nn.Module]  # everything with state that a checkpoint must hold
    device: torch.device
    n_train: int
    signature: dict[str, Any]  # describes model and data; a checkpoint of another task is refused

    def trainable(self) -> list[tuple[str, nn.Parameter]]: ...
    def loss(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...
    def after_step(self) -> None: ...
    def validate(self) -> dict[str, float]: ...  # must include "score": higher is better
    def save(self, out: Path) -> None: ...  # the model directory of the current weights


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """One cycle: linear warm-up to `peak`, then cosine decay to zero."""
    warm = max(1, round(total * warmup))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, norms and temperatures (as open_clip trains)."""
    def exempt(name: str, p: nn.Parameter) -> bool:
        return p.ndim < 2 or any(part in name for part in ("bn", "ln", "norm", "bias", "logit_scale"))

    decay = [p for n, p in named if not exempt(n, p)]
    plain = [p for n, p in named if exempt(n, p)]
    return [{"params": plain, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))


def fit(task: Task, options: TrainOptions, out: Path, resume: bool = False,
        on_event: Callable[[TrainEvent], None] | None = None) -> FitResult:
    """Train `task`, leaving its best weights in `out` (a model directory) and a history beside them.

    Raises:
        TrainingStateError: `out` holds something else, or `resume` finds no matching checkpoint.
        TrainingInterrupted: Ctrl-C (after writing a checkpoint).
    """
    out = Path(out)
    emit = on_event or (lambda event: None)
    batch = min(options.batch_size, task.n_train)
    steps_per_epoch = max(1, task.n_train // batch)  # full batches only: a tiny last batch is a poor contrast
    total = options.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(param_groups(task.trainable(), options.weight_decay), lr=options.lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    state: dict[str, Any] = {"step": 0, "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0,
                             "history": [], "seconds": 0.0}
    key = {"options": options.resume_key(), "task": task.signature}
    if resume:
        state = _load_checkpoint(out / CHECKPOINT, task, optimizer, key)
    else:
        _check_fresh(out)
    amp = options.amp and task.device.type == "cuda"

    started = time.monotonic() - state["seconds"]
    last_checkpoint = time.monotonic()
    stopped = "completed"
    step = state["step"]
    try:
        while step < total:
            epoch, index = divmod(step, steps_per_epoch)
            indices = epoch_order(options.seed, epoch, task.n_train)[index * batch : (index + 1) * batch]
            lr = lr_at(step, total, options.lr, options.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            _train_mode(task, True)
            with torch.autocast(task.device.type, dtype=torch.bfloat16, enabled=amp):
                loss = task.loss(indices, step_generator(options.seed, step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            task.after_step()
            step += 1
            state["step"] = step
            emit(TrainEvent("step", epoch + 1, options.epochs, step, total, loss.item(), lr))

            elapsed = time.monotonic() - started
            if step % steps_per_epoch == 0:
                stop = _end_epoch(task, state, epoch + 1, options, out, elapsed, emit, total)
                _save_checkpoint(out / CHECKPOINT, task, optimizer, state, key, elapsed)
                last_checkpoint = time.monotonic()
                if stop:
                    stopped = "early stopping"
                    break
            elif time.monotonic() - last_checkpoint > options.checkpoint_seconds:
                _save_checkpoint(out / CHECKPOINT, task, optimizer, state, key, elapsed)
                last_checkpoint = time.monotonic()
                emit(TrainEvent("checkpoint", epoch + 1, options.epochs, step, total))
            if options.max_minutes is not None and elapsed > options.max_minutes * 60:
                if step % steps_per_epoch != 0:  # judge the partial epoch too: it may be the best yet
                    _end_epoch(task, state, epoch + 1, options, out, elapsed, emit, total)
                stopped = "time budget"
                break
    except KeyboardInterrupt:
        _save_checkpoint(out / CHECKPOINT, task, optimizer, state, key, time.monotonic() - started)
        raise TrainingInterrupted(step, str(out / CHECKPOINT)) from None

    seconds = time.monotonic() - started
    if state["best_epoch"] == 0:  # not one epoch finished (tiny budget): keep what there is
        _end_epoch(task, state, 1, options, out, seconds, emit, total)
    result = FitResult(out, state["best_score"], state["best_epoch"], len(state["history"]), step, seconds,
                       stopped, state["history"])
    history = {"options": asdict(options), "task": task.signature, "best_score": result.best_score,
               "best_epoch": result.best_epoch, "steps": step, "seconds": round(seconds, 1), "stopped": stopped,
               "history": state["history"]}
    write_bytes_atomic(out / HISTORY, (json.dumps(history, indent=2) + "\n").encode())
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    shutil.rmtree(out / (CHECKPOINT + ".old"), ignore_errors=True)
    return result


def _train_mode(task: Task, training: bool) -> None:
    for module in task.modules.values():
        module.train(training)


def _end_epoch(task: Task, state: dict, epoch: int, options: TrainOptions, out: Path, elapsed: float,
               emit: Callable[[TrainEvent], None], total: int) -> bool:
    """Validate; keep the weights if they are the best yet. True when patience has run out."""
    _train_mode(task, False)
    with torch.no_grad():
        metrics = task.validate()
    # The first validation always keeps its weights, even with a NaN score: some model must be written.
    improved = state["best_epoch"] == 0 or metrics["score"] > state["best_score"] + 1e-4
    if improved:
        state.update(best_score=metrics["score"], best_epoch=epoch, bad_epochs=0)
        task.save(out)
    else:
        state["bad_epochs"] += 1
    state["history"].append({"epoch": epoch, "step": state["step"], "seconds": round(elapsed, 1),
                             **{k: round(v, 4) for k, v in metrics.items()}})
    emit(TrainEvent("epoch", epoch, options.epochs, state["step"], total, metrics=metrics, improved=improved))
    return state["bad_epochs"] >= options.patience


def _check_fresh(out: Path) -> None:
    if (out / CHECKPOINT).exists() or (out / (CHECKPOINT + ".old")).exists():
        raise TrainingStateError(f"{out} holds an interrupted run: add --resume to continue it, "
                                 f"or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise TrainingStateError(f"{out} exists and is not empty: choose another --out")


# ---------------------------------------------------------------- checkpoints

def _save_checkpoint(folder: Path, task: Task, optimizer: torch.optim.Optimizer, state: dict,
                     key: dict, elapsed: float) -> None:
    """Write the whole checkpoint into a fresh folder, then swap it in: never half old, half new."""
    from safetensors.torch import save_file

    temp = folder.with_name(CHECKPOINT + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    weights = {f"{prefix}.{k}": v.detach().cpu().contiguous().clone()
               for prefix, module in task.modules.items() for k, v in module.state_dict().items()}
    optim = optimizer.state_dict()
    tensors = {f"{index}.{name}": value.detach().cpu().contiguous().clone()
               for index, slots in optim["state"].items() for name, value in slots.items()}
    write_atomic(temp / "weights.safetensors", lambda p: save_file(weights, str(p)))
    write_atomic(temp / "optimizer.safetensors", lambda p: save_file(tensors, str(p)))
    groups = [{k: v for k, v in group.items() if k != "params"} | {"params": group["params"]}
              for group in optim["param_groups"]]
    record = {"key": key, "state": {**state, "seconds": elapsed}, "param_groups": groups}
    write_bytes_atomic(temp / "state.json", json.dumps(record).encode())
    old = folder.with_name(CHECKPOINT + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    temp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(folder: Path, task: Task, optimizer: torch.optim.Optimizer, key: dict) -> dict:
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file():
        old = folder.with_name(CHECKPOINT + ".old")  # killed between the two renames of a save
        if not (old / "state.json").is_file():
            raise TrainingStateError(f"nothing to resume: {folder} has no checkpoint")
        folder = old
    record = json.loads((folder / "state.json").read_text())
    if record["key"] != json.loads(json.dumps(key)):
        raise TrainingStateError(f"the checkpoint in {folder} is of a different run (other data, model or "
                                 f"options); rerun with the original options or choose another --out")
    weights = load_file(str(folder / "weights.safetensors"))
    for prefix, module in task.modules.items():
        cut = len(prefix) + 1
        module.load_state_dict({k[cut:]: v for k, v in weights.items() if k.startswith(prefix + ".")})
    slots = load_file(str(folder / "optimizer.safetensors"))
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in slots.items():
        index, slot = name.split(".", 1)
        optim_state.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": optim_state, "param_groups": record["param_groups"]})
    return record["state"]
