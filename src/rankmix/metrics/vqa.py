"""VQA accuracy, the official algorithm (VQA v2 evaluation, ``evaluate_raw`` of VL-T5's ``VQAEvaluator``).

Per question with 10 human answers: the prediction is normalised (newlines/tabs to spaces, punctuation,
lower case, number words to digits, articles dropped, contractions restored); the human answers are only
stripped, and get the punctuation step when they disagree. Accuracy = the mean over the 10 leave-one-out subsets of
min(1, matches among the other 9 / 3), × 100. Overall = the mean over questions; breakdowns by answer type,
by question type, and by the question-type groups of the routing-functions paper (App. A: where, color, time,
person) are means over their questions.
"""

from __future__ import annotations

import re
from collections import defaultdict

CONTRACTIONS = {  # answers written without the apostrophe, restored (the official list's entries, by rule)
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
QUESTION_GROUPS = {  # routing functions App. A: the VQA question types of Tab. 3's columns
    "where": ("where is the", "where are the", "what is on the", "what is in the"),
    "color": ("what color is the", "what color is", "what color are the", "what color", "what is the color of the"),
    "time": ("what time",),
    "person": ("what is the man", "what is the woman", "is the man", "is the woman", "what is the person",
               "is the person", "is this person"),
}
PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period not followed by a digit (the official pattern)
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or re.search(COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=re.UNICODE)  # the official call passes re.UNICODE (32) as the count


def process_digits_articles(text: str) -> str:
    words = []
    for w in text.lower().split():
        w = NUMBERS.get(w, w)
        if w not in ARTICLES:
            words.append(w)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The prediction's normalisation."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digits_articles(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Accuracy × 100 of one prediction against its (usually 10) human answers."""
    if not answers:
        raise ValueError("a VQA question needs its human answers (10 in VQA v2)")
    pred = normalize_answer(prediction)
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:  # only disagreeing answers are punctuation-processed
        gts = [process_punctuation(a) for a in gts]
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        scores.append(min(1.0, sum(a == pred for a in others) / 3.0))
    return 100.0 * sum(scores) / len(scores)


def score_vqa(records: list[dict]) -> dict[str, float]:
    """``{prediction, answers, answer_type?, question_type?}`` records → ``accuracy`` and its breakdowns."""
    per_answer: dict[str, list[float]] = defaultdict(list)
    per_question: dict[str, list[float]] = defaultdict(list)
    per_group: dict[str, list[float]] = defaultdict(list)
    total = []
    for r in records:
        acc = vqa_accuracy(r["prediction"], r["answers"])
        total.append(acc)
        if r.get("answer_type"):
            per_answer[r["answer_type"]].append(acc)
        if r.get("question_type"):
            per_question[r["question_type"]].append(acc)
            for group, types in QUESTION_GROUPS.items():
                if r["question_type"] in types:
                    per_group[group].append(acc)
    out = {"accuracy": sum(total) / len(total)} if total else {}
    out.update({f"accuracy/{k}": sum(v) / len(v) for k, v in sorted(per_answer.items())})
    out.update({f"question_type/{k}": sum(v) / len(v) for k, v in sorted(per_question.items())})
    out.update({f"group/{k}": sum(v) / len(v) for k, v in sorted(per_group.items())})
    _record_items(records, total)
    return out


def _record_items(records: list[dict], scores: list[float]) -> None:
    """Per-item scores (``rankmix.uncertainty``) of the accuracy and each breakdown."""
    from rankmix.uncertainty import record

    ids = [r.get("idx", i) for i, r in enumerate(records)]
    record("accuracy", ids, scores)
    parts: dict[str, list[int]] = defaultdict(list)
    for j, r in enumerate(records):
        if r.get("answer_type"):
            parts[f"accuracy/{r['answer_type']}"].append(j)
        if r.get("question_type"):
            parts[f"question_type/{r['question_type']}"].append(j)
            for group, types in QUESTION_GROUPS.items():
                if r["question_type"] in types:
                    parts[f"group/{group}"].append(j)
    for name, js in parts.items():
        record(name, [ids[j] for j in js], [scores[j] for j in js])
