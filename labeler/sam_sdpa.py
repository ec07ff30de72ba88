"""SAM's image-encoder attention through `torch.nn.functional.scaled_dot_product_attention`.

segment_anything computes attention as explicit matmuls and a softmax over a materialised
[B*heads, N, N] matrix. The same function with SDPA lets PyTorch pick a fused kernel on GPUs
(segment-anything-fast measured ViT-H 19.7 -> 21.9 img/s on an A100 for this step). The decomposed
relative position terms enter as an additive attention bias, exactly as segment_anything adds them
to the logits; tests/test_labelers_sam.py checks the encoder output against the original.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def _sdpa_attention(self, x: torch.Tensor) -> torch.Tensor:
    """x [B, H, W, C] -> [B, H, W, C]; `self` is a segment_anything image-encoder `Attention`."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, heads, N, c]
    bias = None
    if self.use_rel_pos:
        rel_h_table = get_rel_pos(h, h, self.rel_pos_h)  # [h, h, c]
        rel_w_table = get_rel_pos(w, w, self.rel_pos_w)  # [w, w, c]
        r_q = q.reshape(b * self.num_heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_h_table)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_w_table)
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, self.num_heads, h * w, h * w)
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def use_sdpa(image_encoder: torch.nn.Module) -> int:
    """Route every attention block of a SAM image encoder through SDPA; returns how many were changed."""
    from segment_anything.modeling.image_encoder import Attention

    n = 0
    for module in image_encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_sdpa_attention, module)
            n += 1
    return n
