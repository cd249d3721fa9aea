"""Symmetric InfoNCE (open_clip's ClipLoss) that knows when two rows of a batch show the same thing.

Plain CLIP loss treats every other row as a negative. With a small world many rows of a batch share
a concept (two captions "a big red circle on grey" in one batch), and pushing them apart teaches the
model to tell apart what cannot be told apart. Here the target of each row is spread evenly over all
rows of its concept; when every concept is distinct this is exactly open_clip's ClipLoss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss


class ConceptClipLoss(ClipLoss):
    def forward(self, a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
                concepts: torch.Tensor | None = None, output_dict: bool = False):
        """a, b: (B, D) normalised features of paired rows; concepts: (B,) ids or None (all distinct)."""
        logits_ab, logits_ba = self.get_logits(a, b, logit_scale)  # (B, B) each
        if concepts is None:
            targets = self.get_ground_truth(a.device, logits_ab.shape[0])  # class indices
        else:
            same = (concepts[:, None] == concepts[None, :]).to(logits_ab.dtype)  # (B, B), symmetric
            targets = same / same.sum(dim=1, keepdim=True)  # each row a distribution over its positives
        loss = (F.cross_entropy(logits_ab, targets) + F.cross_entropy(logits_ba, targets)) / 2
        return {"contrastive_loss": loss} if output_dict else loss
