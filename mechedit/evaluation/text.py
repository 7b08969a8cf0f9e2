"""Text statistics of generations: ROME's n-gram entropy (fluency) and TF-IDF cosine.

**n-gram entropy** (ROME's ``n_gram_entropy`` / ``compute_n_gram_entropy``): for each
text, the Shannon entropy in bits of its bigram and trigram frequency distributions,
weighted 2/3 and 4/3 and averaged (arithmetic mean of the two weighted entropies);
the score of several texts is the mean over texts. ROME tokenises words with
``nltk.word_tokenize``; nltk and its data are not available offline, so here a word
is ``\\w+`` or a single non-space, non-word character (punctuation as its own token,
which is what ``word_tokenize`` does for ordinary English; contractions differ).

**TF-IDF cosine** (ROME's ``tfidf_similarity``): the cosine of the TF-IDF vectors of
two texts. scikit-learn is not a dependency; :func:`tfidf_cosine` reimplements
``TfidfVectorizer``'s defaults (lower-case, tokens ``\\b\\w\\w+\\b``, raw counts,
smooth idf ``ln((1 + n) / (1 + df)) + 1``, L2 normalisation). ROME fits the idf on
Wikipedia snippets; here the idf corpus is a parameter and defaults to the two texts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from mechedit.errors import ConfigError

_WORD = re.compile(r"\w+|[^\w\s]")
_TFIDF_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def words(text: str) -> list[str]:
    """The word tokens n-gram entropy counts (see the module docstring)."""
    return _WORD.findall(text)


def ngram_entropy_of_text(text: str, ns: Sequence[int] = (2, 3),
                          weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's ``compute_n_gram_entropy`` for one text (bits). 0 for a text too short."""
    if len(ns) != len(weights):
        raise ConfigError("ns and weights must have the same length")
    toks = words(text)
    ents = []
    for n in ns:
        grams = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
        if not grams:
            ents.append(0.0)
            continue
        f = np.array(list(grams.values()), dtype=np.float64)
        f /= f.sum()
        ents.append(float(-(f * np.log2(f)).sum()))
    return float(np.mean(np.array(ents) * np.array(weights)))


def ngram_entropy(texts: Sequence[str]) -> float:
    """ROME's ``n_gram_entropy``: the mean of :func:`ngram_entropy_of_text` over texts."""
    if not texts:
        raise ConfigError("ngram_entropy needs at least one text")
    return float(np.mean([ngram_entropy_of_text(t) for t in texts]))


def _tfidf_tokens(text: str) -> list[str]:
    return _TFIDF_TOKEN.findall(text.lower())


def tfidf_cosine(text_a: str, text_b: str, corpus: Sequence[str] | None = None) -> float:
    """Cosine similarity of the TF-IDF vectors of two texts (idf fitted on ``corpus``).

    ``corpus`` defaults to ``[text_a, text_b]``. Words absent from the corpus are
    dropped (as a fitted ``TfidfVectorizer`` drops unknown words). Returns 0 when
    either vector is empty.
    """
    docs = list(corpus) if corpus is not None else [text_a, text_b]
    if not docs:
        raise ConfigError("the idf corpus is empty")
    n = len(docs)
    df: Counter[str] = Counter()
    for d in docs:
        df.update(set(_tfidf_tokens(d)))
    vocab = sorted(df)
    index = {w: i for i, w in enumerate(vocab)}
    idf = np.array([math.log((1 + n) / (1 + df[w])) + 1.0 for w in vocab])

    def vec(text: str) -> np.ndarray:
        v = np.zeros(len(vocab))
        for w, c in Counter(_tfidf_tokens(text)).items():
            if w in index:
                v[index[w]] = c
        v *= idf
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    a, b = vec(text_a), vec(text_b)
    return float(a @ b)
