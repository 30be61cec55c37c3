"""Real English text available offline: the test data shipped inside the ``gensim`` wheel.

- `wikipedia_articles`: 107 English Wikipedia articles (~480k words) from gensim's shortened enwiki dump,
  markup stripped with gensim's ``filter_wiki``, one article per document (cached as jsonl).
- `lee_news`: the Lee corpus, 300 + 50 Australian news articles (ABC, ~60k words): a disjoint domain.
- `movie_reviews`: 200 labelled movie-review sentences (Pang & Lee polarity, 100 negative, 100 positive).

``gensim`` is needed only here (``pip install gensim``); nothing else in the package imports it.
"""

from __future__ import annotations

import bz2
import json
import os
import re
from pathlib import Path

from ..io import write_text

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def gensim_test_data() -> Path:
    """The folder of gensim's test data (raises ImportError without gensim)."""
    try:
        import gensim
    except ImportError as error:
        raise ImportError("the offline corpora come from the gensim wheel's test data: pip install gensim") from error
    return Path(gensim.__file__).parent / "test" / "test_data"


def _clean(text: str) -> str:
    """filter_wiki output -> plain paragraphs: bold/italic quotes, leftover templates and blank runs removed."""
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"\{\{[^{}]*\}\}|\{\|.*?\|\}", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        if len(line) < 40 or line.startswith(("|", "!", "*", "#", "Category:", "File:", "Image:")):
            continue  # headings, list bullets, table rows and short fragments
        lines.append(line)
    return "\n".join(lines)


def wikipedia_articles(cache: str | os.PathLike | None = None, min_words: int = 200) -> list[dict[str, str]]:
    """``[{"title", "text"}]`` for the dump's main-namespace articles with at least `min_words` words.

    Parsing takes ~10 s; with `cache` (a .jsonl path) the result is written once and read afterwards."""
    if cache is not None and Path(cache).is_file():
        with open(cache, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles = []
    with bz2.open(gensim_test_data() / WIKI_DUMP) as dump:
        for title, text, _ in extract_pages(dump, filter_namespaces=("0",)):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            clean = _clean(filter_wiki(text))
            if len(clean.split()) >= min_words:
                articles.append({"title": title, "text": clean})
    if cache is not None:
        write_text(cache, "".join(json.dumps(a) + "\n" for a in articles))
    return articles


def lee_news() -> tuple[list[str], list[str]]:
    """(the 300 Lee background news articles, the 50 Lee test articles), one document each."""
    root = gensim_test_data()
    read = [[line.strip() for line in (root / name).read_text(encoding="latin-1").splitlines() if line.strip()]
            for name in ("lee_background.cor", "lee.cor")]
    return read[0], read[1]


def movie_reviews() -> list[tuple[str, int]]:
    """200 (sentence, label) pairs, label 1 = positive, 0 = negative."""
    out = []
    for line in (gensim_test_data() / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines():
        if line.strip():
            tag, text = line.split(" ", 1)
            out.append((text.strip(), 1 if tag == "__label__pos" else 0))
    return out
