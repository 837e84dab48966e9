"""The stage registry: recipe names -> classes, as one explicit table.

Imports are lazy so a recipe only loads the libraries of the stages it uses, and
``pipelines`` never imports a concrete stage except through this table.
"""

from __future__ import annotations

import importlib

from clipcurate.pipelines.errors import did_you_mean
from clipcurate.pipelines.stage import Stage

STAGES: dict[str, str] = {
    "download": "clipcurate.pipelines.download.stage:Download",
    "basic_filter": "clipcurate.filters.basic:BasicFilter",
    "language_filter": "clipcurate.filters.language:LanguageFilter",
    "clip_score": "clipcurate.filters.clip_score:ClipScore",
    "clip_heads": "clipcurate.filters.heads:ClipHeads",
    "text_classes": "clipcurate.filters.text_classes:TextClasses",
    "image_clusters": "clipcurate.filters.image_clusters:ImageClusters",
    "cat_filter": "clipcurate.filters.cat:CatFilter",
    "dedup_exact": "clipcurate.dedup.exact:ExactDedup",
    "dedup_perceptual": "clipcurate.dedup.perceptual:PerceptualDedup",
    "dedup_minhash": "clipcurate.dedup.minhash:MinHashDedup",
    "dedup_semantic": "clipcurate.dedup.semantic:SemanticDedup",
    "decontaminate": "clipcurate.dedup.decontaminate:Decontaminate",
    "blocklist": "clipcurate.dedup.blocklist:BlocklistFilter",
    "metaclip": "clipcurate.curation.metaclip:MetaClipBalance",
}


class UnknownStage(KeyError):
    pass


def stage_class(name: str) -> type[Stage]:
    """The class registered under ``name``; for an unknown name, the closest known
    ones first, then all of them."""
    try:
        target = STAGES[name]
    except KeyError:
        known = ", ".join(sorted(STAGES))
        raise UnknownStage(f"unknown stage {str(name)!r}{did_you_mean(name, STAGES)}; known: {known}") from None
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)
