"""HybridGL's rules past the visual features: text analysis and the two spatial guidances.

SPEC-hybridgl sections 5 (the target noun phrase, the other noun phrases, the
direction flag D and the relation flag R), 7 (spatial relationship guidance
on the SAM boxes), 8 steps 1-5 (the GEM heat map turned into per-proposal
scores) and 9 (the final mix and answer). Each rule lives here once: the
method and ``globallocal sweep`` both call these functions.

Quirks of the published code are arguments whose defaults keep them (the
method's settings name them); see :class:`~globallocal.methods.hybridgl.method.HybridGLSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from spacy.tokens import Doc

from ...models.text import noun_phrase_of
from .gem import gem_heat_map

# -- section 5: word lists ---------------------------------------------------------

RELATION_WORDS = frozenset({
    "left", "west", "right", "east", "above", "north", "top", "back", "behind", "below", "south", "under", "front",
    "bigger", "larger", "closer", "smaller", "tinier", "further", "inside", "within", "contained",
    "who", "what", "which", "middle",
})
"""A noun chunk whose root word is one of these is a place or a question word, not an other object."""

NULL_KEYWORDS = frozenset({"part", "image", "side", "picture", "half", "region", "section", "photo"})
"""An other noun with one of these roots ("the left side of the picture") turns the relation flag off."""

DIRECTION_WORDS: dict[str, frozenset[str]] = {
    "left": frozenset({"left"}),
    "right": frozenset({"right"}),
    "middle": frozenset({"middle", "between"}),
    "up": frozenset({"up", "top", "above"}),
    "down": frozenset({"down", "under", "bottom", "low"}),
}
"""Direction flag D: the words of each spatial position (section 5.4)."""

RELATION_FLAG_WORDS: dict[str, frozenset[str]] = {
    "left": frozenset({"left", "west"}),
    "right": frozenset({"right", "east"}),
    "up": frozenset({"above", "north", "top", "back", "behind"}),
    "down": frozenset({"below", "south", "under", "front"}),
    "big": frozenset({"bigger", "larger", "closer"}),
    "small": frozenset({"smaller", "tinier", "further", "smallest"}),
    "within": frozenset({"inside", "within", "contained"}),
}
"""Relation flag R: the words of each relation (section 5.5). "right" is used only with ``right_relation``."""

NONE = "none"
"""The flag value when no word votes."""


@dataclass(frozen=True)
class TextAnalysis:
    """What HybridGL reads from one expression J."""

    expression: str
    noun_phrase: str
    """NP: the target noun phrase (J itself when the parse has none)."""
    other_noun_phrases: tuple[str, ...]
    """The other objects' noun chunks, in order."""
    other_roots: tuple[str, ...]
    """The root word of each other noun phrase."""
    direction: str
    """D: left, right, middle, up, down or none."""
    relation: str
    """R: left, up, down, big, small, within or none (right only with ``right_relation``)."""


def _first_headed(doc: Doc, vocabulary: dict[str, frozenset[str]]) -> str:
    """The flag of the word whose syntactic head comes first in J (ties: the earlier word), or none."""
    flag, best = NONE, 999
    for token in doc:
        for name, words in vocabulary.items():
            if token.text in words and token.head.i < best:
                flag, best = name, token.head.i
    return flag


def analyse_text(doc: Doc, *, right_relation: bool = False, fallback_target_chunk: str = "other") -> TextAnalysis:
    """Section 5 on the parse of J.

    ``right_relation``: Q-right-never; the published code compares a token
    with the set of "right" words by equality, so "right"/"east" never set R;
    True lets them set R = right. ``fallback_target_chunk``: Q-np-fallback;
    "other" (the published code) keeps every chunk as an other noun when NP
    falls back to J; "leading" takes a chunk that starts J to be the
    target's own and drops it from the others.
    """
    noun_phrase, _ = noun_phrase_of(doc)
    fell_back = noun_phrase == doc.text
    others, roots = [], []
    for chunk in doc.noun_chunks:
        if chunk.text == noun_phrase or chunk.root.text in RELATION_WORDS:
            continue
        if fell_back and fallback_target_chunk == "leading" and chunk.start == 0:
            continue
        others.append(chunk.text)
        roots.append(chunk.root.text)
    if set(roots) & NULL_KEYWORDS:
        relation = NONE
    else:
        words = {name: words for name, words in RELATION_FLAG_WORDS.items() if right_relation or name != "right"}
        relation = _first_headed(doc, words)
    return TextAnalysis(
        expression=doc.text,
        noun_phrase=noun_phrase,
        other_noun_phrases=tuple(others),
        other_roots=tuple(roots),
        direction=_first_headed(doc, DIRECTION_WORDS),
        relation=relation,
    )


# -- section 7: spatial relationship guidance ------------------------------------


def top_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the ``k`` largest values, largest first (PyTorch's topk, NaN ranked highest)."""
    return torch.topk(values, k).indices


def relation_terms(
    relation: str,
    p: torch.Tensor,
    candidates: torch.Tensor,
    partners: torch.Tensor,
    weights: torch.Tensor,
    boxes: torch.Tensor,
    within_guard: bool = False,
) -> torch.Tensor:
    """term(a, c) for every candidate a (rows) and partner c (columns), shape (K1, K).

    ``p`` are the target probabilities of all proposals, ``weights`` the
    partners' weights w_c (aligned with ``partners``), ``boxes`` XYWH (N, 4).
    ``within_guard``: Q-within-zero; the published code divides by a
    zero-area candidate box (0 / 0 = NaN); True gives such a box a zero term.
    """
    p_a = p[candidates][:, None]
    if relation == NONE:
        return p_a.expand(-1, len(partners)).clone()
    a, c = boxes[candidates][:, None, :].to(p.dtype), boxes[partners][None, :, :].to(p.dtype)
    pair = p_a * weights[None, :]
    if relation == "within":
        x1 = torch.maximum(a[..., 0], c[..., 0])
        x2 = torch.maximum(x1, torch.minimum(a[..., 0] + a[..., 2], c[..., 0] + c[..., 2]))
        y1 = torch.maximum(a[..., 1], c[..., 1])
        y2 = torch.maximum(y1, torch.minimum(a[..., 1] + a[..., 3], c[..., 1] + c[..., 3]))
        area = a[..., 2] * a[..., 3]
        # In the published code's order: p_a w_c, times the overlap's sides, over the candidate's area.
        share = pair * (x2 - x1) * (y2 - y1) / area
        if within_guard:
            share = torch.where(area > 0, share, torch.zeros_like(share))
        return share
    x, y, w, h = boxes.double().unbind(dim=1)
    centre_x, centre_y, area = x + w / 2, y + h / 2, w * h
    keys = {"left": centre_x, "right": centre_x, "up": centre_y, "down": centre_y, "big": area, "small": area}
    if relation not in keys:
        raise ValueError(f"unknown relation flag {relation!r}")
    key = keys[relation]
    ka, kc = key[candidates][:, None], key[partners][None, :]
    holds = ka < kc if relation in ("left", "up", "small") else ka > kc
    return pair * holds.to(p.dtype)


def relation_scores(
    relation: str,
    p: torch.Tensor,
    candidates: torch.Tensor,
    partners: torch.Tensor,
    weights: torch.Tensor,
    boxes: torch.Tensor,
    within_guard: bool = False,
) -> torch.Tensor:
    """rho: the softmax over the K1 candidates of their summed relation terms (section 7)."""
    terms = relation_terms(relation, p, candidates, partners, weights, boxes, within_guard)
    # The published code adds the float32 terms into a float64 array, then reads it back as float32.
    totals = terms.double().sum(dim=1).float()
    return torch.softmax(totals, dim=0)


# -- section 8: the GEM heat map as per-proposal scores -------------------------


def direction_mask(direction: str, height: int, width: int, vertical: bool = False) -> torch.Tensor:
    """P(D), (height, width): a left/right ramp, a middle tent, or ones.

    ``vertical``: Q-vertical-off; the published code has the up/down masks
    commented out (all ones); True applies them (a top-to-bottom ramp).
    """
    if direction == "left":
        column = torch.linspace(1, 0, width)
    elif direction == "right":
        column = torch.linspace(0, 1, width)
    elif direction == "middle":
        column = torch.cat([torch.linspace(0, 1, width // 2), torch.linspace(1, 0, width - width // 2)])
    elif vertical and direction in ("up", "down"):
        row = torch.linspace(1, 0, height) if direction == "up" else torch.linspace(0, 1, height)
        return row[:, None].expand(height, width).clone()
    else:
        return torch.ones(height, width)
    return column[None, :].expand(height, width).clone()


def _min_max(values: torch.Tensor) -> torch.Tensor:
    return (values - values.min()) / (values.max() - values.min())


def guidance_map(
    heat: torch.Tensor, height: int, width: int, direction: str, *, double_minmax: bool = True, vertical: bool = False
) -> torch.Tensor:
    """Steps 1-4: GEM's square heat map at the image's size, min-max normalised, times P(D), over its mean.

    ``double_minmax``: Q-double-minmax; False skips the second min-max
    normalisation after the resize (GEM's own already happened).
    """
    resized = F.interpolate(heat[None, None].float(), size=(height, width), mode="bilinear", align_corners=False,
                            antialias=True)[0, 0]
    if double_minmax:
        resized = _min_max(resized)
    guided = resized * direction_mask(direction, height, width, vertical).to(resized.device)
    return guided / guided.mean()


def region_means(guidance: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the map inside and outside each mask, (N,) each; NaN for an empty or full mask (0 / 0)."""
    values = guidance.flatten()
    inside = masks.flatten(1).to(guidance.dtype)
    outside = 1 - inside
    # Sums over each region directly (not the total minus the inside), so a full mask's outside is exactly 0 / 0.
    return (inside @ values) / inside.sum(dim=1), (outside @ values) / outside.sum(dim=1)


def heat_map_region_means(
    tokens: torch.Tensor,
    gem_text: torch.Tensor,
    masks: torch.Tensor,
    direction: str,
    *,
    gem_size: int = 448,
    double_minmax: bool = True,
    vertical: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 8 from GEM's patch tokens and the raw GEM prompt feature: the heat map, steps 1-4, and
    step 5's region means of every mask (N, H, W)."""
    heat = gem_heat_map(tokens, F.normalize(gem_text, dim=-1), size=gem_size)
    guidance = guidance_map(heat, masks.shape[1], masks.shape[2], direction, double_minmax=double_minmax,
                            vertical=vertical)
    return region_means(guidance, masks)


def gem_k(relation: str, big: float = 1.95, small: float = 1.5, other: float = 1.8) -> float:
    """Step 5's k for a relation flag."""
    return {"big": big, "small": small}.get(relation, other)


def gem_scores(inside: torch.Tensor, outside: torch.Tensor, k: float) -> torch.Tensor:
    """gem_i = (2 - k) mean(A over m_i) - k mean(A outside m_i)."""
    return (2 - k) * inside - k * outside


# -- section 9: final mix and answer ------------------------------------------------


def first_max(values: torch.Tensor, nan_wins: bool = True) -> int:
    """The index of the first maximum; a NaN counts as the maximum, as PyTorch's argmax does.

    ``nan_wins=False`` (Q-gem-empty off) ranks NaN below every number instead
    (all NaN: the first).
    """
    nan = torch.isnan(values)
    if bool(nan.any()):
        if nan_wins or bool(nan.all()):
            return int(torch.nonzero(nan)[0])
        values = torch.where(nan, torch.full_like(values, float("-inf")), values)
    return int(torch.argmax(values))


def final_scores(rho: torch.Tensor, candidate_gem: torch.Tensor, relation_weight: float = 0.4) -> torch.Tensor:
    """final_k = w rho_k + (1 - w) gem_{top[k]}."""
    return relation_weight * rho + (1 - relation_weight) * candidate_gem


# -- sections 6 to 9 on one sentence ------------------------------------------------------


def clip_scores(unit_features: torch.Tensor, text: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """tau * cos(f_i, t) for L2-normalised visual features (N, D) and a raw text feature (D,)."""
    return tau * (unit_features @ F.normalize(text, dim=-1))


@dataclass(frozen=True)
class Guided:
    """One sentence's decision: the pure answer, the candidates and what decided among them."""

    scores: torch.Tensor
    """The CLIP score s of every proposal, which the pure answer is the best of."""
    pure_index: int
    candidates: torch.Tensor
    """Top-K1 proposals by CLIP score, best first."""
    relation: torch.Tensor
    """rho per candidate."""
    gem: torch.Tensor
    """gem_i of every proposal."""
    final: torch.Tensor
    """The final score per candidate."""
    index: int
    """The answer: the candidate with the best final score."""


def guided_answer(
    scores: torch.Tensor,
    negative_scores: torch.Tensor | None,
    boxes: torch.Tensor,
    inside: torch.Tensor,
    outside: torch.Tensor,
    relation: str,
    *,
    top_k: int,
    negative_k: int,
    relation_weight: float,
    k: float,
    within_guard: bool = False,
    nan_wins: bool = True,
) -> Guided:
    """Sections 6 (pure answer, softmaxes), 7, 8 step 5 and 9 from a sentence's CLIP scores s (N,), its
    other-noun scores s_neg (N,; None without other nouns), the XYWH boxes and the heat map's region means.
    ``top_k`` and ``negative_k`` are K1 and K2, already capped at the number of proposals."""
    p = torch.softmax(scores, dim=0)
    candidates = top_indices(p, top_k)
    if negative_scores is None:
        partners, weights = candidates, p[candidates]
    else:
        q = torch.softmax(negative_scores, dim=0)
        partners = top_indices(q, negative_k)
        weights = q[partners]
    rho = relation_scores(relation, p, candidates, partners, weights, boxes, within_guard)
    gem = gem_scores(inside, outside, k)
    final = final_scores(rho, gem[candidates], relation_weight)
    return Guided(
        scores=scores,
        pure_index=int(torch.argmax(scores)),
        candidates=candidates,
        relation=rho,
        gem=gem,
        final=final,
        index=int(candidates[first_max(final, nan_wins)]),
    )
