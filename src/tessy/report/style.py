"""Style measures between runs on the same prompts (the paper's, in the student's tokenizer):
TF-IDF cosine similarity of responses, a 2-D PCA of the TF-IDF vectors with run centroids,
and frequent style words per thousand tokens of thinking.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..boundary.lexicon import DEFAULT_PHRASES
from ..errors import MissingDependencyError

__all__ = [
    "STYLE_WORDS",
    "Similarity",
    "StyleCounter",
    "TextTokenizer",
    "hf_text_tokenizer",
    "pca_points",
    "style_rates",
    "tfidf_similarity",
    "word_tokenizer",
]

#: A function that splits text into tokens (strings); responses are compared in these units.
TextTokenizer = Callable[[str], list[str]]

#: Words that mark a reasoning model's style: the lexicon predictor's phrases plus the
#: hesitations, checks and transitions that the paper's examples show.
STYLE_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            *DEFAULT_PHRASES,
            "however",
            "therefore",
            "thus",
            "perhaps",
            "hmm",
            "let's check",
            "double-check",
            "verify",
            "i need to",
            "we need to",
            "wait, but",
            "no,",
            "yes,",
            "got it",
            "makes sense",
        ]
    )
)

_WORD = re.compile(r"\w+|[^\w\s]")


def word_tokenizer(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks: the fallback when no tokenizer is given."""
    return _WORD.findall(text.lower())


def hf_text_tokenizer(tokenizer: Any) -> TextTokenizer:
    """A Hugging Face tokenizer as a :data:`TextTokenizer` (token strings, no special tokens)."""

    def split(text: str) -> list[str]:
        return list(tokenizer.tokenize(text))

    return split


def _sklearn() -> Any:
    try:
        import sklearn
    except ImportError as exc:
        raise MissingDependencyError("scikit-learn", "report", "The report's TF-IDF measures") from exc
    return sklearn


@dataclass
class Similarity:
    """Mean TF-IDF cosine similarity of the responses of each pair of runs to the same prompts:
    over ``common`` prompts, of the ``shared`` prompts every run answered (fewer when the
    runs are sampled)."""

    names: list[str]
    matrix: list[list[float]]
    common: int
    shared: int = 0

    def __post_init__(self) -> None:
        self.shared = max(self.shared, self.common)


def _vectorizer() -> Any:
    _sklearn()
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Documents arrive as token lists: the analyzer hands them over unchanged.
    return TfidfVectorizer(analyzer=_identity, sublinear_tf=True)


def _identity(tokens: list[str]) -> list[str]:
    return tokens


def tfidf_similarity(names: Sequence[str], docs: Sequence[dict[str, list[str]]], *, shared: int = 0) -> Similarity:
    """``docs[i]`` maps sample id to the tokens of run ``i``'s response. Only ids that every run
    answered are compared; the vectorizer is fitted on them all, so every run weighs words alike.
    ``shared`` is how many prompts the runs share in all, where ``docs`` hold a sample of them."""
    common = sorted(set.intersection(*(set(d) for d in docs))) if docs else []
    n = len(docs)
    if not common:
        return Similarity(list(names), [[float("nan")] * n for _ in range(n)], 0, shared)
    vec = _vectorizer()
    corpus = [d[i] for d in docs for i in common]
    if not any(corpus):
        return Similarity(list(names), [[float("nan")] * n for _ in range(n)], len(common), shared)
    x = vec.fit_transform(corpus)  # rows are L2-normalised: a dot product is the cosine
    m = len(common)
    blocks = [x[k * m : (k + 1) * m] for k in range(n)]
    matrix = [[0.0] * n for _ in range(n)]
    for a in range(n):
        for b in range(a, n):
            sims = blocks[a].multiply(blocks[b]).sum(axis=1)
            value = float(sims.mean())
            matrix[a][b] = matrix[b][a] = value
    return Similarity(list(names), matrix, m, shared)


def pca_points(docs: Sequence[list[list[str]]], max_per_run: int = 2000) -> list[list[tuple[float, float]]] | None:
    """2-D PCA coordinates of each run's responses (at most ``max_per_run`` each), from TF-IDF
    vectors fitted on all of them; ``None`` when there is too little to project."""
    kept = [d[:max_per_run] for d in docs]
    corpus = [t for d in kept for t in d]
    if len(corpus) < 3 or not any(corpus):
        return None
    x = _vectorizer().fit_transform(corpus)
    if x.shape[1] < 2 or (x.max(axis=0) != x.min(axis=0)).nnz == 0:
        return None  # too few words, or every response the same: no direction to project on
    from sklearn.decomposition import PCA, TruncatedSVD

    try:
        points = PCA(n_components=2, svd_solver="arpack", random_state=0).fit_transform(x)
    except (TypeError, ValueError, RuntimeError):
        # Older scikit-learn cannot centre sparse input, and ARPACK fails (a RuntimeError) when
        # every response is the same: a truncated SVD is the nearest thing.
        with warnings.catch_warnings():  # identical responses: no variance to explain
            warnings.simplefilter("ignore", RuntimeWarning)
            points = TruncatedSVD(n_components=2, random_state=0).fit_transform(x)
    out: list[list[tuple[float, float]]] = []
    start = 0
    for d in kept:
        out.append([(float(px), float(py)) for px, py in points[start : start + len(d)]])
        start += len(d)
    return out


def _phrase_regex(phrase: str) -> re.Pattern[str]:
    words = [re.escape(w).replace("'", "['’]") for w in phrase.lower().split()]
    # Whole words only: "so" is not counted in "also" or in "so-called".
    tail = r"(?![\w-])" if phrase[-1:].isalnum() else ""
    return re.compile(r"(?<![\w-])" + r"\s+".join(words) + tail, re.IGNORECASE)


def _lowered_regex(phrase: str) -> re.Pattern[str]:
    """:func:`_phrase_regex` for lower-cased text, twenty times faster: the first word comes first
    (so the engine scans for it as a literal) and its left boundary is checked behind it."""
    words = [re.escape(w).replace("'", "['’]") for w in phrase.lower().split()]
    tail = r"(?![\w-])" if phrase[-1:].isalnum() else ""
    return re.compile(words[0] + r"(?<![\w-]" + words[0] + ")" + "".join(r"\s+" + w for w in words[1:]) + tail)


# The only characters that match an ASCII letter case-insensitively, or whose lower case is not
# one character of the same kind (word, space, other): in a text without them, the lower-cased
# text holds a match of the fast pattern exactly where the text holds one of the case-blind one
# (tests/test_report.py checks this against every code point).
_CASE_HAZARDS = re.compile("[\u0130\u0131\u017f\u212a]")


class StyleCounter:
    """Style words and phrases counted one text at a time, with the tokens they are rated by."""

    def __init__(self, words: Sequence[str] = STYLE_WORDS) -> None:
        self.words = tuple(words)
        self.counts = dict.fromkeys(self.words, 0)
        self.tokens = 0
        self._exact = [_phrase_regex(w) for w in self.words]
        self._fast = [_lowered_regex(w) for w in self.words]

    def add(self, text: str, n_tokens: int) -> None:
        self.tokens += n_tokens
        if _CASE_HAZARDS.search(text) is None:
            lowered, patterns = text.lower(), self._fast
        else:
            lowered, patterns = text, self._exact
        for w, pattern in zip(self.words, patterns, strict=True):
            self.counts[w] += len(pattern.findall(lowered))

    def rates(self) -> dict[str, float]:
        """Occurrences of each word per thousand tokens."""
        if self.tokens <= 0:
            return {w: 0.0 for w in self.words}
        return {w: 1000.0 * c / self.tokens for w, c in self.counts.items()}


def style_rates(texts: Sequence[str], n_tokens: int, words: Sequence[str] = STYLE_WORDS) -> dict[str, float]:
    """How often each style word or phrase occurs per thousand tokens of ``texts``."""
    counter = StyleCounter(words)
    for text in texts:
        counter.add(text, 0)
    counter.tokens = n_tokens
    return counter.rates()
