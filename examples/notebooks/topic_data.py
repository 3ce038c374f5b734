"""Corpus loading, text cleaning and topic-quality metrics for the topic-model notebooks.

Framework-free (numpy only, gensim optional), shared by the Pyro and NumPyro notebooks::

    from topic_data import load_corpus, top_words, coherence, topic_diversity, perplexity

Data: the Lee news corpus shipped inside the gensim wheel (``lee_background.cor``, 300 ABC news
documents, for training; ``lee.cor``, 50 documents from the same source, held out; Lee, Pincombe &
Welsh 2005). Without gensim, a small synthetic corpus drawn from an LDA model with four hand-written
themes stands in, so the notebooks still run (coherence is then computed by the NPMI fallback here).

Smoke mode (``ARSM_NOTEBOOK_SMOKE=1``, used by the test suite) shrinks the corpus; the notebooks
also shrink their step counts.
"""

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Corpus",
    "STOPWORDS",
    "smoke_mode",
    "tokenize",
    "load_corpus",
    "synthetic_corpus",
    "top_words",
    "coherence",
    "npmi_coherence",
    "topic_diversity",
    "perplexity",
]

_HERE = Path(__file__).resolve().parent


def _read_stopwords():
    lines = (_HERE / "stopwords_en.txt").read_text().splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


STOPWORDS = _read_stopwords()


def smoke_mode():
    """True when ``ARSM_NOTEBOOK_SMOKE`` is set to a non-empty value other than ``0``."""
    return os.environ.get("ARSM_NOTEBOOK_SMOKE", "0") not in ("", "0")


def tokenize(text, stopwords=STOPWORDS, min_len=3):
    """Lower-case alphabetic tokens of at least ``min_len`` letters, stop words removed."""
    return [w for w in re.findall(r"[a-z]+", text.lower())
            if len(w) >= min_len and w not in stopwords]


@dataclass
class Corpus:
    """A tokenized corpus split into training and held-out documents over one vocabulary.

    ``train_ids`` / ``test_ids`` hold one int array of vocabulary ids per document
    (out-of-vocabulary words dropped); ``train_texts`` / ``test_texts`` the same documents as word
    lists (what gensim's coherence needs).
    """

    name: str
    vocab: list
    train_ids: list
    test_ids: list
    word_to_id: dict = field(repr=False)

    @property
    def num_words(self):
        return len(self.vocab)

    @property
    def train_texts(self):
        return [[self.vocab[i] for i in doc] for doc in self.train_ids]

    @property
    def test_texts(self):
        return [[self.vocab[i] for i in doc] for doc in self.test_ids]

    def _docs(self, split):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self.train_ids if split == "train" else self.test_ids

    def num_tokens(self, split="train"):
        return int(sum(len(d) for d in self._docs(split)))

    def counts(self, split="train", dtype=np.float32):
        """Bag-of-words matrix ``[D, V]``."""
        docs = self._docs(split)
        out = np.zeros((len(docs), self.num_words), dtype=dtype)
        for d, doc in enumerate(docs):
            np.add.at(out[d], doc, 1)
        return out

    def padded(self, split="train", length=None):
        """Word ids padded on the right: ``(ids [D, L] int64, mask [D, L] bool)``.

        Padding positions hold id 0 and ``mask == False``; models must mask them out.
        """
        docs = self._docs(split)
        length = length or max(len(d) for d in docs)
        ids = np.zeros((len(docs), length), dtype=np.int64)
        mask = np.zeros((len(docs), length), dtype=bool)
        for d, doc in enumerate(docs):
            doc = doc[:length]
            ids[d, : len(doc)] = doc
            mask[d, : len(doc)] = True
        return ids, mask

    def summary(self):
        return (
            f"{self.name}: {len(self.train_ids)} training documents "
            f"({self.num_tokens('train')} tokens), "
            f"{len(self.test_ids)} held-out ({self.num_tokens('test')} tokens), "
            f"vocabulary {self.num_words}"
        )


def _build(name, train_tokens, test_tokens, min_df, max_df, max_vocab):
    """Vocabulary from the training documents: document frequency in [min_df, max_df * D]."""
    df = Counter(w for doc in train_tokens for w in set(doc))
    limit = max_df * len(train_tokens)
    words = [w for w, n in df.items() if min_df <= n <= limit]
    tf = Counter(w for doc in train_tokens for w in doc)
    words.sort(key=lambda w: (-tf[w], w))
    if max_vocab is not None:
        words = words[:max_vocab]
    words.sort()
    word_to_id = {w: i for i, w in enumerate(words)}

    def ids(docs):
        out = [np.array([word_to_id[w] for w in doc if w in word_to_id], dtype=np.int64)
               for doc in docs]
        return [d for d in out if len(d) > 0]

    return Corpus(name, words, ids(train_tokens), ids(test_tokens), word_to_id)


def _lee_paths():
    try:
        from gensim.test.utils import datapath
    except ImportError:
        return None
    paths = datapath("lee_background.cor"), datapath("lee.cor")
    return paths if all(os.path.exists(p) for p in paths) else None


def _read_lines(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line for line in f.read().splitlines() if line.strip()]


_THEMES = {
    "sport": "match team cricket goal coach season player final league score win test wicket runs",
    "finance": "market shares bank dollar interest rates profit investors economy trade price "
               "growth stocks",
    "weather": "fire rain storm bushfire winds firefighters heat flood temperatures coast blaze "
               "smoke crews",
    "politics": "government minister election party parliament labor vote policy leader senate "
                "campaign prime",
}


def synthetic_corpus(num_train=120, num_test=30, doc_length=40, alpha=0.3, seed=0):
    """Tiny LDA corpus over four hand-written themes: the fallback when gensim is absent.

    Returns ``(train_texts, test_texts)`` as word lists; topics put 90% of their mass on their own
    theme's words and share the rest uniformly.
    """
    rng = np.random.default_rng(seed)
    themes = [t.split() for t in _THEMES.values()]
    vocab = sorted({w for t in themes for w in t})
    index = {w: i for i, w in enumerate(vocab)}
    topics = np.full((len(themes), len(vocab)), 0.1 / len(vocab))
    for k, theme in enumerate(themes):
        topics[k, [index[w] for w in theme]] += 0.9 / len(theme)

    def draw(n):
        docs = []
        for _ in range(n):
            theta = rng.dirichlet(np.full(len(themes), alpha))
            z = rng.choice(len(themes), size=doc_length, p=theta)
            docs.append([vocab[rng.choice(len(vocab), p=topics[k])] for k in z])
        return docs

    return draw(num_train), draw(num_test)


def load_corpus(source="auto", smoke=None, min_df=3, max_df=0.5, max_vocab=None):
    """Load and clean the corpus.

    :param source: ``"lee"`` (needs gensim), ``"synthetic"``, or ``"auto"`` (Lee when gensim is
        installed, else synthetic).
    :param smoke: shrink the corpus (default: :func:`smoke_mode`): 60 training and 20 held-out
        documents, vocabulary capped at 300 words.
    :param min_df, max_df: keep words in at least ``min_df`` training documents and at most a
        fraction ``max_df`` of them.
    :param max_vocab: keep only the most frequent words.
    """
    smoke = smoke_mode() if smoke is None else smoke
    if source not in ("auto", "lee", "synthetic"):
        raise ValueError(f"source must be 'auto', 'lee' or 'synthetic', got {source!r}")
    paths = _lee_paths() if source in ("auto", "lee") else None
    if source == "lee" and paths is None:
        raise ImportError(
            "the Lee corpus ships with gensim: pip install gensim (or the 'examples' extra)")
    if paths is not None:
        train = [tokenize(t) for t in _read_lines(paths[0])]
        test = [tokenize(t) for t in _read_lines(paths[1])]
        name = "Lee news corpus (gensim test data)"
    else:
        train, test = synthetic_corpus()
        name = "synthetic four-theme corpus (gensim not installed)"
        min_df, max_df = 1, 1.0
    if smoke:
        train, test = train[:60], test[:20]
        max_vocab = min(max_vocab or 300, 300)
        min_df = min(min_df, 2)
        name += " [smoke subset]"
    return _build(name, train, test, min_df, max_df, max_vocab)


def top_words(topic_word, vocab, n=10):
    """The ``n`` highest-weight words of each row of ``topic_word`` (``[K, V]``, any monotone
    scale)."""
    topic_word = np.asarray(topic_word)
    order = np.argsort(-topic_word, axis=-1)[:, :n]
    return [[vocab[i] for i in row] for row in order]


def npmi_coherence(topics, texts, eps=1e-12):
    """Mean normalized PMI of word pairs in each topic, from document co-occurrence in ``texts``.

    The fallback when gensim is absent (gensim's ``c_npmi`` uses a sliding window of 10 words
    instead of whole documents, so the two numbers are not interchangeable).
    """
    docs = [set(t) for t in texts]
    n = len(docs)

    def p(*words):
        return sum(all(w in d for w in words) for d in docs) / n

    scores = []
    for topic in topics:
        pairs = []
        for i in range(1, len(topic)):
            for j in range(i):
                pij = p(topic[i], topic[j])
                if pij == 0:
                    pairs.append(-1.0)
                    continue
                pmi = math.log(pij / (p(topic[i]) * p(topic[j]) + eps))
                pairs.append(pmi / -math.log(pij + eps) if pij < 1 else 1.0)
        scores.append(float(np.mean(pairs)) if pairs else float("nan"))
    return float(np.mean(scores)), scores


def coherence(topics, texts, measures=("c_npmi", "c_v"), processes=1):
    """Topic coherence of ``topics`` (lists of words) against the reference ``texts``.

    Uses gensim's ``CoherenceModel`` (``processes=1``) when installed; otherwise ``c_npmi`` comes
    from :func:`npmi_coherence` and the other measures are NaN. Returns ``{measure: mean}`` plus
    ``{measure + "_per_topic": [...]}``.
    """
    try:
        from gensim.corpora import Dictionary
        from gensim.models.coherencemodel import CoherenceModel
    except ImportError:
        mean, per_topic = npmi_coherence(topics, texts)
        out = {m: float("nan") for m in measures}
        if "c_npmi" in measures:
            out["c_npmi"], out["c_npmi_per_topic"] = mean, per_topic
        return out
    dictionary = Dictionary(texts)
    out = {}
    for measure in measures:
        cm = CoherenceModel(
            topics=topics, texts=texts, dictionary=dictionary, coherence=measure,
            processes=processes,
        )
        per_topic = [float(x) for x in cm.get_coherence_per_topic()]
        out[measure] = float(np.nanmean(per_topic))
        out[measure + "_per_topic"] = per_topic
    return out


def topic_diversity(topics, n=25):
    """Fraction of unique words among the top ``n`` words of all topics (1 = no overlap)."""
    words = [w for t in topics for w in t[:n]]
    return len(set(words)) / max(len(words), 1)


def perplexity(neg_elbo, num_tokens):
    """``exp(-ELBO / #tokens)``: an upper bound on the held-out perplexity, since
    -ELBO >= -log p."""
    return float(math.exp(neg_elbo / num_tokens))
