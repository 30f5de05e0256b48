"""Lesson 05: metrics that say how good a model is, in the units people report.

- `accuracy`: the fraction of predictions whose arg-max is the label (optionally over
  real tokens only, for sequences). Written with `keras.ops`.
- `retrieval_ranks` and `recall_at_k`: for retrieval (lesson 06). Written with `keras.ops`.
  **Ties count against the true item** (pessimistic): the rank of the true item is the
  number of candidates whose score is >= its score, so a model that gives every
  candidate the same score has rank N, not 1. A NaN score also counts against it.
- `corpus_bleu`, `sentence_bleu`, `corpus_bleu_details`: BLEU-4 with the brevity
  penalty (Papineni et al., 2002), on token lists, in plain Python (lesson 08).
- `corpus_cider`: CIDEr-D (Vedantam et al., 2015), TF-IDF-weighted n-gram similarity, the
  captioning metric papers report beside BLEU-4 (the capstone's photo runs).

Metrics return float32 scalar tensors (`accuracy`, `recall_at_k`) or Python floats (BLEU);
``float(...)`` turns a tensor into a number for printing.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Sequence

import numpy as np
from keras import ops

from mmlm_course.losses import check_labels, check_mask, float_tensor, masked_mean
from mmlm_course.preprocessing import split_words
from mmlm_course.validation import (as_array, concrete_values, require_choice, require_float, require_int,
                                    require_int_dtype, static_shape)

# --------------------------------------------------------------------------- classification


def accuracy(labels, logits, mask=None):
    """Fraction of predictions whose highest score is the true class.

    Args:
        labels: int (...,) class ids; logits: float (..., C) scores (logits or probabilities,
            the arg-max is the same). A tie for the highest score goes to the first class.
        mask: optional bool (...,) (same shape as labels), True where a prediction counts
            (e.g. real tokens). With a mask and no real token the accuracy is 0.0.
    Returns: float32 scalar tensor in [0, 1].
    """
    logits = float_tensor(logits, "accuracy: logits", "scores")
    values = concrete_values(logits)                     # None while tracing a graph
    if values is not None and np.isnan(values).any():
        raise ValueError("accuracy: the scores contain NaN (a diverged model?); the arg-max of NaN is meaningless.")
    if len(static_shape(logits)) < 2:
        raise ValueError(f"accuracy: expected scores of shape (B, C) (or (B, T, C)), got shape {static_shape(logits)}.")
    labels = check_labels(labels, logits, "accuracy: labels")
    correct = ops.cast(ops.equal(ops.argmax(logits, axis=-1), ops.cast(labels, "int32")), "float32")
    if mask is None:
        return ops.mean(correct)
    return masked_mean(correct, check_mask(mask, static_shape(correct), "accuracy: mask"))


# --------------------------------------------------------------------------- retrieval


def _check_retrieval(scores, targets):
    scores = float_tensor(scores, "scores", "scores")
    if len(static_shape(scores)) != 2:
        raise ValueError(f"scores: expected shape (Q, N): one row of N candidate scores per query, "
                         f"got shape {static_shape(scores)}.")
    num_queries, num_candidates = static_shape(scores)
    if targets is None:
        if None not in (num_queries, num_candidates) and num_queries > num_candidates:
            raise ValueError(f"targets=None means query i matches candidate i, which needs Q <= N, got "
                             f"{num_queries} queries and {num_candidates} candidates: pass the targets.")
        return scores, ops.arange(num_queries if num_queries is not None else ops.shape(scores)[0], dtype="int32")
    targets = ops.convert_to_tensor(as_array(targets, "targets"))
    require_int_dtype(targets, "targets", what="integer candidate indices (one per query)")
    if len(static_shape(targets)) != 1 or (None not in (static_shape(targets)[0], num_queries)
                                      and static_shape(targets)[0] != num_queries):
        raise ValueError(f"targets: expected shape ({num_queries},) (one true candidate index per query row of "
                         f"scores {static_shape(scores)}), got shape {static_shape(targets)}.")
    values = concrete_values(targets)
    if values is not None and values.size and num_candidates is not None and (
            values.min() < 0 or values.max() >= num_candidates):
        raise ValueError(f"targets: candidate indices must lie in [0, {num_candidates}), got values from "
                         f"{int(values.min())} to {int(values.max())}.")
    return scores, ops.cast(targets, "int32")


def retrieval_ranks(scores, targets=None):
    """The rank (1 = best) of each query's true candidate, counting ties against it.

    ``rank_i = #{j : scores[i, j] >= scores[i, targets[i]]}`` (the true item itself
    included), computed as ``N - #{j : scores[i, j] < true score}`` so that NaN scores
    count against the true item too.

    Args:
        scores: float (Q, N): query i's score for candidate j (e.g. image-text similarity).
        targets: int (Q,) index of the true candidate of each query; None means
            ``arange(Q)`` (the matching pairs lie on the diagonal, as in a CLIP batch).
    Returns: int32 (Q,) ranks in [1, N].
    """
    scores, targets = _check_retrieval(scores, targets)
    true_scores = ops.take_along_axis(scores, ops.expand_dims(targets, 1), axis=1)  # (Q, 1)
    strictly_better_for_true = ops.sum(ops.cast(ops.less(scores, true_scores), "int32"), axis=1)
    return ops.cast(ops.shape(scores)[1], "int32") - strictly_better_for_true


def recall_at_k(scores, targets=None, k: int = 1):
    """Recall@K: the fraction of queries whose true candidate is among the top K.

    A query counts when its `retrieval_ranks` rank is <= k. Ties with the true
    candidate count against it (pessimistic): a model that scores every candidate the
    same gets recall 0 for every k < N, not a lucky hit. Arguments as in
    `retrieval_ranks`; ``k`` is an int in [1, N]. Returns a float32 scalar tensor in [0, 1].
    """
    scores = ops.convert_to_tensor(as_array(scores, "scores"))
    num_candidates = static_shape(scores)[-1] if len(static_shape(scores)) == 2 else None
    k = require_int(k, "k", low=1)
    if static_shape(scores)[:1] == (0,):                  # the mean of no queries would be NaN
        raise ValueError(f"scores: expected at least one query row, got shape {static_shape(scores)}.")
    if num_candidates is not None and k > num_candidates:
        raise ValueError(f"k must lie in [1, N] = [1, {num_candidates}] (N candidates per query), got k={k}.")
    ranks = retrieval_ranks(scores, targets)
    return ops.mean(ops.cast(ranks <= int(k), "float32"))


# --------------------------------------------------------------------------- BLEU

SMOOTHING = ("none", "add1")


@dataclasses.dataclass(frozen=True)
class BleuScore:
    """Corpus BLEU and its parts. ``score`` is in [0, 1] (multiply by 100 for the usual scale)."""

    score: float
    precisions: tuple[float, ...]  # modified n-gram precision p_n for n = 1..max_order (after smoothing)
    matches: tuple[int, ...]  # clipped n-gram matches per order
    totals: tuple[int, ...]  # candidate n-grams per order
    brevity_penalty: float
    hypothesis_length: int  # c, total candidate tokens
    reference_length: int  # r, total closest-reference tokens


def _tokens(sentence, what: str) -> list:
    if isinstance(sentence, str):
        return split_words(sentence)
    if isinstance(sentence, np.ndarray):
        sentence = sentence.tolist()
    if isinstance(sentence, (list, tuple)):
        for token in sentence:
            if not isinstance(token, (str, int, np.integer)) or isinstance(token, bool):
                raise TypeError(f"{what}: expected a string or a list of tokens (str or int ids), got a list "
                                f"containing {type(token).__name__} {token!r}.")
        return [int(t) if isinstance(t, np.integer) else t for t in sentence]
    raise TypeError(f"{what}: expected a string or a list of tokens, got {type(sentence).__name__}.")


def _references(item, hypothesis_is_text: bool, index: int) -> list[list]:
    where = f"references[{index}]"
    if isinstance(item, str):
        return [split_words(item)]
    if not isinstance(item, (list, tuple)) or len(item) == 0:
        raise TypeError(f"{where}: expected a reference string or a non-empty list of references, "
                        f"got {type(item).__name__} {item!r}"[:200] + ".")
    if all(isinstance(r, str) for r in item) and hypothesis_is_text:
        return [split_words(r) for r in item]
    if not all(isinstance(r, (list, tuple, np.ndarray)) for r in item):
        raise TypeError(f"{where}: with tokenized hypotheses, each item of references must be a LIST of "
                        "tokenized references, e.g. [[\"a\", \"red\", \"circle\"]] for one reference. "
                        f"Got {item!r}"[:300] + ": wrap a single tokenized reference in a list.")
    return [_tokens(r, f"{where}") for r in item]


def _ngrams(tokens: list, n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu_details(references: Sequence, hypotheses: Sequence, max_order: int = 4,
                        smoothing: str = "none") -> BleuScore:
    """Corpus BLEU (Papineni et al., 2002) with every part of the computation.

    Args:
        references: one entry per hypothesis: a string, or a list of references (each a
            string, or a token list). With token-list hypotheses each entry must be a list
            of token lists (``[[t1, t2, ...]]`` for a single reference).
        hypotheses: strings (split with `preprocessing.split_words`) or token lists
            (strings or int ids; strip padding and ``<eos>`` first).
        max_order: N, the longest n-gram (4 for BLEU-4).
        smoothing: ``"none"``: the standard corpus BLEU; if any order has no match (or no
            n-gram at all, e.g. every candidate is shorter than N) the score is 0.
            ``"add1"``: Lin & Och (2004): for n >= 2, ``p_n = (matches + 1) / (totals + 1)``,
            so a candidate shorter than N gets ``p_n = 1`` for the orders it cannot have,
            instead of a zero that wipes out the score. Unigram precision is never smoothed.

    The n-gram counts are clipped by the maximum count in any one reference and summed
    over the corpus before dividing (corpus BLEU is not the mean of sentence BLEUs).
    Brevity penalty: ``BP = 1`` if ``c > r`` else ``exp(1 - r / c)``, where ``c`` is the total
    hypothesis length and ``r`` the sum of the reference lengths closest to each hypothesis
    length (ties go to the shorter reference); an empty corpus of candidates (c = 0) scores 0.
    BLEU = ``BP * exp(mean_n log p_n)``.
    """
    max_order = require_int(max_order, "max_order", 1, 100)  # the longest n-gram (4 for BLEU-4)
    require_choice(smoothing, SMOOTHING, "smoothing")
    if isinstance(hypotheses, (str, dict)) or isinstance(references, (str, dict)):
        raise TypeError("corpus_bleu expects lists: references (one entry per hypothesis) and hypotheses; "
                        "for one sentence use sentence_bleu(reference, hypothesis).")
    if len(references) != len(hypotheses):
        raise ValueError(f"references and hypotheses must have the same length (one entry of references per "
                         f"hypothesis), got {len(references)} references and {len(hypotheses)} hypotheses.")
    if len(hypotheses) == 0:
        raise ValueError("corpus_bleu got no hypotheses; expected at least one.")
    matches, totals = [0] * max_order, [0] * max_order
    c = r = 0
    for index, (refs, hyp) in enumerate(zip(references, hypotheses)):
        hyp_is_text = isinstance(hyp, str)
        hyp_tokens = _tokens(hyp, f"hypotheses[{index}]")
        ref_tokens = _references(refs, hyp_is_text, index)
        c += len(hyp_tokens)
        r += min((abs(len(ref) - len(hyp_tokens)), len(ref)) for ref in ref_tokens)[1]
        for n in range(1, max_order + 1):
            counts = _ngrams(hyp_tokens, n)
            max_ref = Counter()
            for ref in ref_tokens:
                max_ref |= _ngrams(ref, n)  # element-wise maximum of the counts
            matches[n - 1] += sum(min(count, max_ref[gram]) for gram, count in counts.items())
            totals[n - 1] += max(len(hyp_tokens) - n + 1, 0)
    precisions = []
    for n, (m, t) in enumerate(zip(matches, totals), start=1):
        if smoothing == "add1" and n >= 2:
            precisions.append((m + 1) / (t + 1))
        else:
            precisions.append(m / t if t > 0 else 0.0)
    if c == 0:
        brevity_penalty = 0.0
    else:
        brevity_penalty = 1.0 if c > r else math.exp(1.0 - r / c)
    if min(precisions) == 0.0 or brevity_penalty == 0.0:
        score = 0.0
    else:
        score = brevity_penalty * math.exp(sum(math.log(p) for p in precisions) / max_order)
    return BleuScore(score, tuple(precisions), tuple(matches), tuple(totals), brevity_penalty, c, r)


def corpus_bleu(references: Sequence, hypotheses: Sequence, max_order: int = 4, smoothing: str = "none") -> float:
    """Corpus BLEU-``max_order`` in [0, 1]; see `corpus_bleu_details` for inputs and smoothing."""
    return corpus_bleu_details(references, hypotheses, max_order, smoothing).score


def sentence_bleu(reference, hypothesis, max_order: int = 4, smoothing: str = "add1") -> float:
    """BLEU of one hypothesis against one reference (or a list of references), in [0, 1].

    Sentence BLEU is noisy; it is smoothed (``"add1"``) by default because one missing
    4-gram would otherwise make it 0. ``reference`` is a string, a token list, or a list
    of either.
    """
    if not isinstance(hypothesis, str) and isinstance(reference, (list, tuple)) and reference \
            and not isinstance(reference[0], (list, tuple, np.ndarray)):
        reference = [reference]  # a single token list
    return corpus_bleu([reference], [hypothesis], max_order, smoothing)


def corpus_cider(references: Sequence, hypotheses: Sequence, sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al., 2015), the captioning metric of the COCO evaluation server.

    Each caption becomes, for n = 1..4, a vector of its n-gram counts weighted by TF-IDF:
    an n-gram found in the references of many images (``"a"``, ``"of the"``) weighs little,
    one that is specific to few images weighs a lot. The score of a hypothesis is the cosine
    similarity of its vector with each reference's, averaged over its references and over
    n, times 10. The "-D" variant, the one papers report, clips each hypothesis count by
    the reference's (repeating a word earns nothing) and multiplies by a Gaussian penalty
    ``exp(-(len(hyp) - len(ref))**2 / (2 sigma**2))`` on the length difference. The document
    frequencies come from the references of this corpus, so the score depends on the
    corpus: compare systems on the same references. Returns the mean over hypotheses; a
    perfect match of all references scores about 10 at most, good COCO models about 1.

    references / hypotheses: as `corpus_bleu` (one entry of references per hypothesis).
    """
    if isinstance(hypotheses, (str, dict)) or isinstance(references, (str, dict)):
        raise TypeError("corpus_cider expects lists: references (one entry per hypothesis) and hypotheses.")
    if len(references) != len(hypotheses):
        raise ValueError(f"references and hypotheses must have the same length (one entry of references per "
                         f"hypothesis), got {len(references)} references and {len(hypotheses)} hypotheses.")
    if len(hypotheses) == 0:
        raise ValueError("corpus_cider got no hypotheses; expected at least one.")
    sigma = require_float(sigma, "sigma (the length penalty's width, 6 in CIDEr-D)", low=0, low_open=True)
    hyps = [_tokens(h, f"hypotheses[{i}]") for i, h in enumerate(hypotheses)]
    refs = [_references(r, isinstance(h, str), i) for i, (r, h) in enumerate(zip(references, hypotheses))]
    orders = range(1, 5)
    document_frequency = Counter(gram for rs in refs for n in orders
                                 for gram in set().union(*(_ngrams(r, n) for r in rs)))
    log_images = math.log(len(refs))

    def vectors(tokens):       # per order: {n-gram: tf-idf weight}, and the vector's norm
        weighted = [{g: c * (log_images - math.log(max(1.0, document_frequency[g]))) for g, c in _ngrams(tokens, n).items()}
                    for n in orders]
        return weighted, [math.sqrt(sum(w * w for w in v.values())) for v in weighted]

    scores = []
    for hyp, rs in zip(hyps, refs):
        hyp_vectors, hyp_norms = vectors(hyp)
        total = 0.0
        for ref in rs:
            ref_vectors, ref_norms = vectors(ref)
            penalty = math.exp(-((len(hyp) - len(ref)) ** 2) / (2 * sigma ** 2))
            for hv, rv, hn, rn in zip(hyp_vectors, ref_vectors, hyp_norms, ref_norms):
                if hn and rn:
                    total += penalty * sum(min(w, rv.get(g, 0.0)) * rv.get(g, 0.0) for g, w in hv.items()) / (hn * rn)
        scores.append(10.0 * total / (len(orders) * len(rs)))
    return float(np.mean(scores))
