"""Masked and class-token blocks through the written-out attention: open_clip's block's values, to rounding."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock

from globallocal.models.attention import class_token_block, residual_block


def _block(batch_first: bool, seed: int = 0) -> ResidualAttentionBlock:
    torch.manual_seed(seed)
    block = ResidualAttentionBlock(32, 4, batch_first=batch_first, ls_init_value=0.5).eval()
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    return block


def _plain(block: ResidualAttentionBlock, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The block itself on batch-first tokens: the reference."""
    if block.attn.batch_first:
        return block(x, attn_mask=mask)
    return block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)


def _masks(batch: int, tokens: int, heads: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    per_head = torch.where(torch.rand(batch * heads, tokens, tokens, generator=generator) < 0.3, float("-inf"), 0.0)
    per_head[:, :, 0] = 0.0  # every query keeps one key
    causal = torch.full((tokens, tokens), float("-inf")).triu(1)
    return {"per head": per_head, "causal": causal}


def _refuse_module_attention(block: ResidualAttentionBlock, monkeypatch) -> None:
    """Calling nn.MultiheadAttention itself fails: the written-out path must be the one taken."""

    def refuse(*args, **kwargs):
        raise AssertionError("nn.MultiheadAttention was called")

    monkeypatch.setattr(block.attn, "forward", refuse)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kind", ["per head", "causal"])
@torch.no_grad()
def test_masked_block_equals_the_block(batch_first, kind, monkeypatch):
    block = _block(batch_first)
    x = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(2))
    mask = _masks(3, 9, 4)[kind]
    expected = _plain(block, x, mask)
    assert (expected - _plain(block, x, None)).abs().max() > 1e-3  # the mask matters
    _refuse_module_attention(block, monkeypatch)
    got = residual_block(block, x, mask)
    assert got.shape == (3, 9, 32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
@torch.no_grad()
def test_class_token_row_equals_the_blocks_first_row(batch_first, monkeypatch):
    block = _block(batch_first, seed=3)
    x = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(4))
    mask = _masks(3, 9, 4)["per head"]
    expected = {"none": _plain(block, x, None)[:, :1], "mask": _plain(block, x, mask)[:, :1]}
    _refuse_module_attention(block, monkeypatch)
    torch.testing.assert_close(class_token_block(block, x), expected["none"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(class_token_block(block, x, mask), expected["mask"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(class_token_block(block, x, mask[:, :1]), expected["mask"], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_bfloat16_masked_block_stays_close_to_float32():
    block = _block(True, seed=5)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(6))
    mask = _masks(2, 9, 4)["per head"]
    expected = _plain(block, x, mask)
    got = residual_block(block.to(torch.bfloat16), x.bfloat16(), mask.bfloat16()).float()
    assert float((got - expected).abs().max() / expected.abs().max()) < 3e-2


@torch.no_grad()
def test_a_boolean_mask_runs_the_block_itself():
    block = _block(True, seed=7)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(8))
    mask = torch.ones(9, 9, dtype=torch.bool).triu(1)  # True: not allowed to attend, nn.MultiheadAttention's rule
    torch.testing.assert_close(residual_block(block, x, mask), block(x, attn_mask=mask))
    torch.testing.assert_close(class_token_block(block, x, mask), block(x, attn_mask=mask)[:, :1])
