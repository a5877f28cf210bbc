"""The official VQA accuracy (VQA v2 evaluation), written from its published rules.

An answer is compared after normalisation (:func:`normalize_answer`): punctuation
removed or spaced, number words to digits, articles dropped, contractions restored.
With ``N`` human answers the accuracy of a prediction is the mean, over the ``N``
leave-one-annotator-out subsets, of ``min(1, #matches in the subset / 3)``; with the
usual 10 annotators that is the average over the 10 choose 9 subsets.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
            "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!"]
# A period not followed by a digit is dropped ("(?!<=\d)" is the official pattern as
# published: a lookahead, so "2.5" keeps its point, "dog." loses it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """The official answer normalisation: whitespace, punctuation, digits, articles,
    contractions (e.g. ``"Two dogs."`` -> ``"2 dogs"``, ``"dont"`` -> ``"don't"``)."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(answer))


def vqa_score(prediction: str, gt_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one prediction against the annotators' answers.

    Mean over the leave-one-out subsets of ``min(1, matches / 3)``; both sides are
    normalised (the official script normalises the ground truth only when the
    annotators disagree, because VQA's stored answers are already normalised; doing it
    always gives the same numbers on VQA and is safe on other data).
    """
    if not gt_answers:
        raise ValueError("vqa_score needs at least one ground-truth answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in gt_answers]
    matches = [int(g == pred) for g in gts]
    total = sum(matches)
    if len(gts) == 1:  # no subset to leave one out of: exact match
        return float(total)
    accs = [min(1.0, (total - m) / 3.0) for m in matches]
    return sum(accs) / len(accs)


def annotators_from_weights(answers: Sequence[str], weights: Sequence[float] | None,
                            num_annotators: int = 10) -> list[str]:
    """Rebuild the annotators' answer list from distinct answers and their shares.

    Stores keep each distinct answer with its share of the annotators (VQA: count/10).
    Shares that sum to 1 become ``round(share * num_annotators)`` copies; otherwise
    (e.g. Visual Genome's single answers weighted 0.5, or no weights) every listed
    answer counts as given by all annotators, i.e. full credit for any of them.
    """
    if weights is None or abs(sum(weights) - 1.0) > 1e-3:
        return [a for a in answers for _ in range(num_annotators)]
    out = []
    for a, w in zip(answers, weights):
        out.extend([a] * max(1, int(round(w * num_annotators))))
    return out


def vqa_accuracy(predictions: Mapping | Iterable, ground_truth: Mapping) -> float:
    """Mean :func:`vqa_score` in percent.

    Args:
        predictions: ``{question_id: answer}`` or an iterable of
            ``{"question_id", "answer"}`` dicts (the predictions file layout).
        ground_truth: ``{question_id: [annotator answers]}``.
    """
    if not isinstance(predictions, Mapping):
        predictions = {p["question_id"]: p["answer"] for p in predictions}
    missing = [q for q in ground_truth if q not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} questions have no prediction (e.g. {missing[0]!r})")
    if not ground_truth:
        return 0.0
    return 100.0 * sum(vqa_score(predictions[q], gts) for q, gts in ground_truth.items()) \
        / len(ground_truth)
