"""Metrics of lesson 05 against float64 NumPy / plain-Python references written here."""

import math
import re
from collections import Counter

import numpy as np
import pytest

from mmlm_course import metrics

RNG = np.random.default_rng(1)


# --------------------------------------------------------------------------- accuracy


def test_accuracy_matches_reference():
    logits = RNG.normal(size=(20, 4)).astype(np.float32)
    labels = RNG.integers(0, 4, size=20)
    assert float(metrics.accuracy(labels, logits)) == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_accuracy_with_mask_ties_and_empty_mask():
    logits = np.array([[[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [5.0, 0.0, 0.0]]], np.float32)  # (1, 3, 3)
    labels = np.array([[0, 2, 1]])
    mask = np.array([[True, True, False]])
    # A tie for the top score goes to the first class: position 0 is correct, 1 is wrong.
    assert float(metrics.accuracy(labels, logits, mask)) == pytest.approx(0.5)
    assert float(metrics.accuracy(labels, logits, np.zeros_like(mask))) == 0.0


def test_accuracy_errors():
    with pytest.raises(ValueError, match="labels: expected shape"):
        metrics.accuracy(np.zeros(2, np.int32), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected scores of shape \(B, C\)"):
        metrics.accuracy(np.zeros(3, np.int32), np.zeros(3, np.float32))


# --------------------------------------------------------------------------- retrieval


def ref_ranks(scores, targets):
    scores = np.asarray(scores, np.float64)
    true = scores[np.arange(len(scores)), targets]
    return np.array([int(np.sum(row >= t)) for row, t in zip(scores, true)])


TIES = np.array([[0.9, 0.5, 0.1, 0.3],
                 [0.2, 0.8, 0.8, 0.1],
                 [0.4, 0.3, 0.7, 0.7],
                 [0.6, 0.5, 0.4, 0.9]], np.float32)
TIE_TARGETS = np.array([0, 1, 3, 2])


def test_ranks_count_ties_against_the_true_item():
    ranks = np.asarray(metrics.retrieval_ranks(TIES, TIE_TARGETS))
    np.testing.assert_array_equal(ranks, [1, 2, 2, 4])
    np.testing.assert_array_equal(ranks, ref_ranks(TIES, TIE_TARGETS))
    np.testing.assert_array_equal(np.asarray(metrics.retrieval_ranks(np.ones((3, 5), np.float32))), [5, 5, 5])


@pytest.mark.parametrize("k,expected", [(1, 0.25), (2, 0.75), (3, 0.75), (4, 1.0)])
def test_recall_at_k_with_ties(k, expected):
    assert float(metrics.recall_at_k(TIES, TIE_TARGETS, k)) == expected


def test_recall_at_k_random_against_reference_and_diagonal_default():
    scores = RNG.normal(size=(30, 30)).astype(np.float32)
    scores[np.arange(30), np.arange(30)] += 1.5
    ranks = ref_ranks(scores, np.arange(30))
    for k in (1, 5, 10, 30):
        assert float(metrics.recall_at_k(scores, k=k)) == pytest.approx(np.mean(ranks <= k))
    targets = RNG.integers(0, 30, size=30)
    assert float(metrics.recall_at_k(scores, targets, 5)) == pytest.approx(np.mean(ref_ranks(scores, targets) <= 5))


def test_nan_scores_count_against_the_true_item():
    scores = np.array([[1.0, np.nan, 0.0], [np.nan, 1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(metrics.retrieval_ranks(scores, np.array([0, 0]))), [2, 3])


def test_retrieval_errors():
    with pytest.raises(ValueError, match="must be >= 1"):
        metrics.recall_at_k(TIES, TIE_TARGETS, 0)
    with pytest.raises(ValueError, match=r"k must lie in \[1, N\]"):
        metrics.recall_at_k(TIES, TIE_TARGETS, 5)
    with pytest.raises(TypeError, match="k must be an int"):
        metrics.recall_at_k(TIES, TIE_TARGETS, 1.0)
    with pytest.raises(ValueError, match="targets: expected shape"):
        metrics.recall_at_k(TIES, TIE_TARGETS[:3], 1)
    with pytest.raises(ValueError, match="candidate indices must lie in"):
        metrics.recall_at_k(TIES, np.array([0, 1, 2, 4]), 1)
    with pytest.raises(ValueError, match=r"scores: expected shape \(Q, N\)"):
        metrics.recall_at_k(TIES[0], None, 1)
    with pytest.raises(ValueError, match="needs Q <= N"):
        metrics.retrieval_ranks(np.ones((5, 3), np.float32))


# --------------------------------------------------------------------------- BLEU


def ref_bleu(references, hypotheses, max_order=4, add1=False):
    """Corpus BLEU on token lists (references: list of lists of token lists), float64."""
    matches = np.zeros(max_order)
    totals = np.zeros(max_order)
    c = r = 0
    for refs, hyp in zip(references, hypotheses):
        c += len(hyp)
        r += sorted((abs(len(x) - len(hyp)), len(x)) for x in refs)[0][1]
        for n in range(1, max_order + 1):
            grams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            best = Counter()
            for ref in refs:
                for gram, count in Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1)).items():
                    best[gram] = max(best[gram], count)
            matches[n - 1] += sum(min(count, best[gram]) for gram, count in grams.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    p = np.array([(m + 1) / (t + 1) if add1 and n > 0 else (m / t if t else 0.0)
                  for n, (m, t) in enumerate(zip(matches, totals))])
    if c == 0 or (p == 0).any():
        return 0.0
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(np.log(p).mean())


# The example corpus of the NLTK documentation (nltk.translate.bleu_score).
HYP1 = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
REF1A = "It is a guide to action that ensures that the military will forever heed Party commands".split()
REF1B = "It is the guiding principle which guarantees the military forces always being under the command of the Party".split()
REF1C = "It is the practical guide for the army always to heed the directions of the party".split()
HYP2 = "he read the book because he was interested in world history".split()
REF2A = "he was interested in world history because he read the book".split()


def test_corpus_bleu_matches_the_published_example_and_reference():
    references, hypotheses = [[REF1A, REF1B, REF1C], [REF2A]], [HYP1, HYP2]
    score = metrics.corpus_bleu(references, hypotheses)
    assert 0.5920 <= score < 0.5921  # NLTK's documentation prints 0.5920...
    assert score == pytest.approx(ref_bleu(references, hypotheses), rel=1e-12)
    mean_sentence = (metrics.sentence_bleu([REF1A, REF1B, REF1C], HYP1, smoothing="none")
                     + metrics.sentence_bleu([REF2A], HYP2, smoothing="none")) / 2
    assert 0.6223 <= mean_sentence < 0.6224  # corpus BLEU is not the mean of sentence BLEUs


def test_bleu_random_corpora_against_reference():
    words = list("abcde")
    for trial in range(20):
        references, hypotheses = [], []
        for _ in range(3):
            hypotheses.append([words[i] for i in RNG.integers(0, 5, size=RNG.integers(1, 9))])
            references.append([[words[i] for i in RNG.integers(0, 5, size=RNG.integers(1, 9))]
                               for _ in range(RNG.integers(1, 3))])
        for add1 in (False, True):
            got = metrics.corpus_bleu(references, hypotheses, smoothing="add1" if add1 else "none")
            assert got == pytest.approx(ref_bleu(references, hypotheses, add1=add1), rel=1e-12, abs=1e-15)


def test_bleu_clips_repeated_words_and_penalises_short_candidates():
    details = metrics.corpus_bleu_details([[["the", "cat", "is", "on", "the", "mat"]]],
                                          [["the", "the", "the", "the", "the", "the", "the"]], max_order=1)
    assert details.matches == (2,) and details.totals == (7,)  # "the" is clipped to its 2 reference uses
    short = metrics.corpus_bleu_details(["a red circle is to the left of a blue square"], ["a red circle"],
                                        smoothing="add1")
    assert short.brevity_penalty == pytest.approx(math.exp(1 - 11 / 3))
    assert metrics.sentence_bleu("a red circle", "a red circle") == 1.0


def test_candidate_shorter_than_the_ngram_order():
    refs, hyp = [[["a", "red", "circle"]]], [["red", "circle"]]
    # No 3- or 4-grams exist: unsmoothed BLEU is 0 (no crash), add-one smoothing gives p3 = p4 = 1.
    assert metrics.corpus_bleu(refs, hyp) == 0.0
    details = metrics.corpus_bleu_details(refs, hyp, smoothing="add1")
    assert details.totals == (2, 1, 0, 0)
    assert details.precisions == (1.0, 1.0, 1.0, 1.0)
    assert details.score == pytest.approx(math.exp(1 - 3 / 2))
    assert details.score == pytest.approx(ref_bleu(refs, hyp, add1=True))
    assert metrics.corpus_bleu([[["a"]]], [[]], smoothing="add1") == 0.0  # empty candidate


def test_bleu_accepts_strings_and_token_ids():
    assert metrics.corpus_bleu(["A red circle is above a blue square."], ["a red circle is above a blue square ."]) == 1.0
    assert metrics.corpus_bleu([["a red circle", "a big red circle"]], ["a big red circle"], max_order=2) == 1.0
    assert metrics.corpus_bleu([[[5, 6, 7, 8]]], [np.array([5, 6, 7, 8])]) == 1.0


def test_bleu_errors():
    with pytest.raises(TypeError, match="wrap a single tokenized reference"):
        metrics.corpus_bleu([["a", "red", "circle"]], [["a", "red", "circle"]])
    with pytest.raises(ValueError, match="same length"):
        metrics.corpus_bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="smoothing must be one of"):
        metrics.corpus_bleu(["a"], ["a"], smoothing="floor")
    with pytest.raises(TypeError, match="for one sentence use sentence_bleu"):
        metrics.corpus_bleu("a red circle", "a red circle")
    with pytest.raises(TypeError, match="a list of tokens"):
        metrics.corpus_bleu([[[1.5, 2.0]]], [[1, 2]])
    with pytest.raises(TypeError, match="max_order must be an int"):
        metrics.corpus_bleu(["a"], ["a"], max_order=2.0)
    with pytest.raises(ValueError, match="max_order must be >= 1"):
        metrics.corpus_bleu(["a"], ["a"], max_order=0)


# Issue #16: a huge max_order used to loop for minutes.
@pytest.mark.parametrize("max_order,error", [(10**9, ValueError), ("4", TypeError), (0, ValueError)])
def test_bleu_max_order_is_bounded(max_order, error):
    with pytest.raises(error, match="max_order"):
        metrics.sentence_bleu("a red circle".split(), "a red square".split(), max_order=max_order)


def ref_cider(references, hypotheses, n=4, sigma=6.0):
    """CIDEr-D as the COCO caption evaluation code (pycocoevalcap's cider_scorer) computes it."""
    from collections import defaultdict
    import math

    def counts(words):
        return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))

    crefs = [[counts(r.split()) for r in refs] for refs in references]
    ctest = [counts(h.split()) for h in hypotheses]
    df = defaultdict(float)
    for refs in crefs:
        for gram in set(g for ref in refs for g in ref):
            df[gram] += 1
    ref_len = math.log(len(crefs))

    def vec(cnts):
        v, norm, length = [defaultdict(float) for _ in range(n)], [0.0] * n, 0
        for gram, tf in cnts.items():
            k = len(gram) - 1
            v[k][gram] = tf * (ref_len - math.log(max(1.0, df[gram])))
            norm[k] += v[k][gram] ** 2
            if k == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for test, refs in zip(ctest, crefs):
        v, norm, length = vec(test)
        total = np.zeros(n)
        for ref in refs:
            vr, normr, lengthr = vec(ref)
            for k in range(n):
                val = sum(min(v[k][g], vr[k][g]) * vr[k][g] for g in v[k])
                if norm[k] and normr[k]:
                    val /= norm[k] * normr[k]
                total[k] += val * math.exp(-((length - lengthr) ** 2) / (2 * sigma ** 2))
        scores.append(total.mean() / len(refs) * 10.0)
    return float(np.mean(scores))


CIDER_REFERENCES = [["a red circle is to the left of a blue square", "a blue square and a red circle"],
                    ["there are two green triangles", "two triangles , both green"],
                    ["a small red circle", "a red circle"]]
CIDER_HYPOTHESES = ["a red circle left of a square", "two green triangles", "a red red red circle"]


def test_corpus_cider_matches_the_coco_evaluation_code():
    score = metrics.corpus_cider(CIDER_REFERENCES, CIDER_HYPOTHESES)
    assert score == pytest.approx(ref_cider(CIDER_REFERENCES, CIDER_HYPOTHESES), rel=1e-12)
    assert 0.0 < score < 10.0


def test_corpus_cider_rewards_specific_words_and_clips_repeats():
    captions = [["red circle left"], ["blue square right"], ["green triangle up"]]
    assert metrics.corpus_cider(captions, [c[0] for c in captions]) == pytest.approx(7.5)   # no 4-grams: 3 of 4 orders
    common = [["a red circle"], ["a blue square"], ["a green triangle"]]         # "a" is in every image's references
    assert metrics.corpus_cider(common, ["a", "a", "a"]) == 0.0                    # a word every image has weighs 0
    assert metrics.corpus_cider(common, ["red", "blue", "green"]) > 0.0             # a word of one image does not
    once = metrics.corpus_cider(captions, ["red circle", "blue square", "green triangle"])
    repeated = metrics.corpus_cider(captions, ["red red circle circle", "blue blue square square", "green green triangle triangle"])
    assert repeated < once                                                         # repeating a word earns nothing


@pytest.mark.parametrize("references, hypotheses, sigma, error, word", [
    (["a b"], ["a b", "c"], 6.0, ValueError, "same length"),
    ([], [], 6.0, ValueError, "no hypotheses"),
    ("a b", "a b", 6.0, TypeError, "lists"),
    ([["a b"]], ["a b"], 0.0, ValueError, "sigma"),
    ([["a b"]], ["a b"], "6", TypeError, "sigma"),
    ([["a b"]], [None], 6.0, TypeError, "hypotheses[0]"),
])
def test_corpus_cider_rejects_bad_input(references, hypotheses, sigma, error, word):
    with pytest.raises(error, match=re.escape(word)):
        metrics.corpus_cider(references, hypotheses, sigma=sigma)
