"""VQA answer normalisation as the official VQA v2 evaluation (vqaTools/vqaEval.py:
processPunctuation + processDigitArticle) does it, one function for packing and scoring."""
from __future__ import annotations

import pytest

from x2core.eval.metrics.vqa import normalize_answer, vqa_score

# (raw, normalised), each pair from one rule of the official script
OFFICIAL = [
    ("  yes  ", "yes"),               # strip
    ("Yes", "yes"),                   # lower-case
    ("tab\tand\nnewline", "tab and newline"),  # \n, \t -> space
    ("dog.", "dog"),                  # periodStrip: a period not before a digit goes
    ("3 p.m.", "3 pm"),
    ("2.5", "2.5"),                   # ... a decimal point stays
    ("1,000", "1000"),                # commaStrip (digit,digit): every listed mark removed
    ("1,000 dogs!", "1000 dogs"),
    ("red, white", "red white"),      # "p " in the text: the mark removed
    ("wait - what", "wait what"),
    ("black-and-white", "black and white"),  # otherwise: replaced by a space
    ("t-shirt?", "t shirt"),
    ("(left)", "left"),
    ("yes/no", "yes no"),
    ("what's", "what's"),             # an apostrophe is not in the list
    ("Two", "2"),                     # manualMap: number words to digits
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),             # ... only zero..ten and none
    ("the dog", "dog"),               # articles dropped
    ("An Apple", "apple"),
    ("a", ""),
    ("dont", "don't"),                # contractions
    ("isnt", "isn't"),
    ("Ive", "ive"),                   # the table's "Ive" key never matches: it lower-cases first
    ("hes here", "he's here"),
]


@pytest.mark.parametrize("raw,normalised", OFFICIAL)
def test_official_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_scoring_matches_differently_written_answers():
    assert vqa_score("Two", ["2"] * 10) == 1.0
    assert vqa_score("2", ["two."] * 3 + ["3"] * 7) == pytest.approx(0.9)  # 10-choose-9 of min(1, m/3)
