"""Conditional flow matching (rectified flow): training loss and a seeded Euler sampler with
classifier-free guidance.

Images live in [-1, 1]. A training row draws noise x0 and a time t, and the network learns the
straight-line velocity x1 - x0 at x_t = (1 - t) x0 + t x1. Sampling integrates that velocity from
noise at t=0 to an image at t=1 in a few Euler steps, each step mixing the conditional and the
unconditional prediction: v = v_null + w (v_cond - v_null).
"""

from __future__ import annotations

import numpy as np
import torch

from generation.network import FlowUNet


def flow_matching_loss(model: FlowUNet, images: torch.Tensor, conditions: torch.Tensor,
                       generator: torch.Generator, cond_dropout: float | None = None) -> torch.Tensor:
    """Mean squared velocity error on a batch: images (B, 3, S, S) in [-1, 1], conditions (B, D).

    All randomness (noise, times, which rows lose their condition) comes from `generator`, so a
    step is reproducible from (seed, step).
    """
    batch = images.shape[0]
    dropout = model.config.cond_dropout if cond_dropout is None else cond_dropout
    device = images.device
    noise = torch.randn(images.shape, generator=generator, device="cpu").to(device)  # x0
    t = torch.rand(batch, generator=generator, device="cpu").to(device)
    keep = (torch.rand(batch, generator=generator, device="cpu") >= dropout).to(device)
    x_t = (1 - t)[:, None, None, None] * noise + t[:, None, None, None] * images
    predicted = model(x_t, t, conditions, keep)
    return torch.mean((predicted - (images - noise)) ** 2)


@torch.inference_mode()
def sample(model: FlowUNet, conditions: torch.Tensor, seed: int, steps: int | None = None,
           guidance: float | None = None) -> np.ndarray:
    """Images (B, S, S, 3) uint8 for conditions (B, D), deterministic for a given seed.

    Row i's starting noise depends only on (seed, i), so asking for 4 candidates gives the same
    first candidate as asking for 1.
    """
    config = model.config
    steps = steps or config.steps
    guidance = config.guidance if guidance is None else guidance
    device = next(model.parameters()).device
    batch, size = conditions.shape[0], config.image_size
    noise = [torch.randn((3, size, size), generator=torch.Generator().manual_seed(seed * 1_000_003 + row))
             for row in range(batch)]
    x = torch.stack(noise).to(device)  # (B, 3, S, S) at t=0
    conditions = conditions.to(device)
    for step in range(steps):
        t = torch.full((batch,), step / steps, device=device)
        if guidance == 1.0:
            velocity = model(x, t, conditions)
        else:
            # One pass over 2B rows: the first B conditioned, the last B with the null condition.
            keep = torch.cat([torch.ones(batch, dtype=torch.bool), torch.zeros(batch, dtype=torch.bool)]).to(device)
            both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([conditions, conditions]), keep)
            conditional, unconditional = both[:batch], both[batch:]
            velocity = unconditional + guidance * (conditional - unconditional)
        x = x + velocity / steps
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, 3, S, S)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()
