"""Caption metrics as the COCO caption evaluation computes them: corpus BLEU-1..4 and CIDEr-D.

Written from the published definitions (Papineni et al. 2002; Vedantam et al. 2015) with
the COCO evaluation's choices, so the numbers agree with ``pycocoevalcap`` on the same
tokens:

* BLEU: corpus level (clipped n-gram matches and lengths summed over all images), the
  "closest" reference length per hypothesis (ties -> the shorter one), brevity penalty
  ``exp(1 - r/c)`` when ``c < r``; smoothing constants 1e-15 / 1e-9 as there.
* CIDEr-D: n = 1..4, TF-IDF n-gram vectors with document frequencies from the
  references of the evaluated set, clipped hypothesis weights, a Gaussian length
  penalty with sigma = 6 (length = number of bigrams, as in the COCO code), mean over
  n and references, times 10.

Tokenisation: the COCO evaluation runs the Stanford PTB tokenizer (Java) and drops
punctuation; :func:`tokenize_caption` lowercases and splits off the same punctuation,
which matches it on plain captions.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Mapping, Sequence

_PUNCT = re.compile(r"""[''"`.,!?;:()\[\]{}\-/\\]|-LRB-|-RRB-""")


def tokenize_caption(text: str) -> list[str]:
    """Lowercase, drop punctuation, split on whitespace."""
    return _PUNCT.sub(" ", text.lower()).split()


def _ngrams(words: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def _as_tokens(x) -> list[str]:
    return x.split() if isinstance(x, str) else list(x)


def _check(hyps: Mapping, refs: Mapping) -> list:
    keys = list(refs)
    if set(keys) != set(hyps):
        raise ValueError("hypotheses and references must have the same keys")
    for k in keys:
        if not refs[k]:
            raise ValueError(f"image {k!r} has no reference caption")
    return keys


def bleu(hyps: Mapping[object, str | Sequence[str]], refs: Mapping[object, Sequence[str | Sequence[str]]],
         n: int = 4) -> list[float]:
    """Corpus BLEU-1..n in [0, 1].

    Args:
        hyps: ``{image: hypothesis}``, a string of space-separated tokens or a token list.
        refs: ``{image: [reference, ...]}`` in the same form.
    """
    keys = _check(hyps, refs)
    correct, guess = [0] * n, [0] * n
    test_len = ref_len = 0
    for key in keys:
        hyp = _as_tokens(hyps[key])
        ref_toks = [_as_tokens(r) for r in refs[key]]
        max_ref: dict = {}
        for r in ref_toks:
            for g, c in _ngrams(r, n).items():
                max_ref[g] = max(max_ref.get(g, 0), c)
        lens = [len(r) for r in ref_toks]
        ref_len += min((abs(length - len(hyp)), length) for length in lens)[1]
        test_len += len(hyp)
        for g, c in _ngrams(hyp, n).items():
            correct[len(g) - 1] += min(max_ref.get(g, 0), c)
        for k in range(1, n + 1):
            guess[k - 1] += max(len(hyp) - k + 1, 0)
    tiny, small = 1e-15, 1e-9
    scores, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        bp = math.exp(1 - 1 / ratio)
        scores = [s * bp for s in scores]
    return scores


def cider_d(hyps: Mapping[object, str | Sequence[str]], refs: Mapping[object, Sequence[str | Sequence[str]]],
            n: int = 4, sigma: float = 6.0) -> tuple[float, dict]:
    """CIDEr-D of the corpus and per image: ``(mean, {image: score})``; ``(0.0, {})`` when empty."""
    keys = _check(hyps, refs)
    if not keys:  # log(#images) below is undefined for an empty corpus
        return 0.0, {}
    hyp_counts = {k: _ngrams(_as_tokens(hyps[k]), n) for k in keys}
    ref_counts = {k: [_ngrams(_as_tokens(r), n) for r in refs[k]] for k in keys}
    df: Counter = Counter()
    for k in keys:
        for g in set(g for c in ref_counts[k] for g in c):
            df[g] += 1
    log_n = math.log(float(len(keys)))

    def vec(counts: Counter):
        v = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            v[k][g] = float(tf) * (log_n - math.log(max(1.0, df[g])))
            norm[k] += v[k][g] ** 2
            if k == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    def sim(vh, nh, lh, vr, nr, lr):
        delta = float(lh - lr)
        out = [0.0] * n
        for k in range(n):
            for g, w in vh[k].items():
                out[k] += min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0)
            if nh[k] != 0 and nr[k] != 0:
                out[k] /= nh[k] * nr[k]
            out[k] *= math.e ** (-(delta ** 2) / (2 * sigma ** 2))
        return out

    per_image = {}
    for k in keys:
        vh, nh, lh = vec(hyp_counts[k])
        total = [0.0] * n
        for rc in ref_counts[k]:
            s = sim(vh, nh, lh, *vec(rc))
            total = [a + b for a, b in zip(total, s)]
        per_image[k] = sum(total) / n / len(ref_counts[k]) * 10.0
    return sum(per_image.values()) / len(per_image), per_image
