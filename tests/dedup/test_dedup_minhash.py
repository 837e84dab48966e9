import itertools

import numpy as np
import pytest

from dedup.minhash import MinHashDedup, jaccard, shingles

WORDS = (
    "red blue green vintage leather wooden modern summer dress chair table lamp garden beach "
    "sunset mountain city street portrait dog cat coffee cup handmade silver ring gold necklace "
    "kitchen sofa poster canvas print photo large small cotton shirt women men kids"
).split()


def captions(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(8, 14))) for _ in range(count)]


def test_shingles():
    assert shingles("  Red  DRESS ", "char", 5) == {"red d", "ed dr", "d dre", " dres", "dress"}
    assert shingles("red dress on sale", "word", 2) == {"red dress", "dress on", "on sale"}
    assert shingles("Red dress, red SHOES!", "word", 1) == {"red", "dress", "shoes"}
    assert shingles("dog", "char", 5) == {"dog"}
    assert shingles("   ", "char", 5) == set()


def test_edits_and_templates_are_grouped(run_global, make_pool, reasons_of):
    table = make_pool(
        ["a", "b", "c", "d", "e", "f", "g"],
        captions=[
            "Vintage red leather handbag with gold buckle, free shipping",
            "vintage red leather handbag with gold buckle,  FREE shipping",  # case/space only
            "Vintage red leather handbag with silver buckle, free shipping",  # one word
            "A dog running on the beach at sunset",
            "",  # no shingles: never a duplicate
            None,
            "Modern wooden dining table with six chairs",
        ],
        scores=[0.2, 0.3, 0.1, 0.5, 0.5, 0.5, 0.5],
    )
    stage = MinHashDedup()
    out = run_global(stage, table)
    assert reasons_of(out) == {
        "a": "dedup_minhash:duplicate_of=b",
        "b": None,
        "c": "dedup_minhash:duplicate_of=b",
        "d": None,
        "e": None,
        "f": None,
        "g": None,
    }
    assert stage.summary() == {"bands": stage.bands, "rows": stage.rows, "duplicates": 2, "groups": 1}
    assert out.column("minhash_bands").null_count == 2


def test_matches_brute_force_jaccard(run_global, make_pool):
    """Pairs at Jaccard >= 0.8 end up in one group (LSH recall, seeded); every removed
    caption is linked to its group through a verified >= 0.8 pair."""
    base = captions(150, 1)
    rng = np.random.default_rng(2)
    edited = []
    for text in base[:100]:
        words = text.split()
        for _ in range(rng.integers(1, 4)):
            words[rng.integers(len(words))] = str(rng.choice(WORDS))
        edited.append(" ".join(words))
    texts = base + edited
    uids = [f"u{i:04d}" for i in range(len(texts))]
    stage = MinHashDedup()
    out = run_global(stage, make_pool(uids, captions=texts))
    sets = [stage.shingles(t) for t in texts]
    survivor = {u: (r.split("=")[1] if r else u) for u, r in zip(uids, out.column("reject").to_pylist())}
    true_pairs = [(a, b) for a, b in itertools.combinations(range(len(texts)), 2) if jaccard(sets[a], sets[b]) >= 0.8]
    assert len(true_pairs) > 30
    found = sum(survivor[uids[a]] == survivor[uids[b]] for a, b in true_pairs)
    assert found >= 0.95 * len(true_pairs), (found, len(true_pairs))
    for uid, root in survivor.items():  # members of a group are linked through >= 0.8 pairs
        if uid != root:
            assert any(survivor[uids[b]] == root and jaccard(sets[uids.index(uid)], sets[b]) >= 0.8 for b in range(len(texts)) if uids[b] != uid)


def test_without_verification_lsh_alone_links_candidates(run_global, make_pool, reasons_of):
    table = make_pool(["a", "b"], captions=["handmade silver ring with blue stone"] * 2)
    out = run_global(MinHashDedup(verify="none", ngram="word", ngram_size=1), table)
    assert reasons_of(out) == {"a": None, "b": "dedup_minhash:duplicate_of=a"}


def test_config_is_validated():
    with pytest.raises(ValueError):
        MinHashDedup(threshold=0.8, candidate_threshold=0.9)
    with pytest.raises(ValueError):
        MinHashDedup(ngram="sentence")


def test_partitioning_does_not_change_kept_set(run_global, make_pool):
    texts = captions(80, 3)
    texts = texts + [t.replace(t.split()[0], "lamp", 1) for t in texts]
    uids = [f"u{i:03d}" for i in range(len(texts))]
    scores = [(i * 13 % 10) / 10 for i in range(len(texts))]
    one = run_global(MinHashDedup(), make_pool(uids, captions=texts, scores=scores), 1).column("reject").to_pylist()
    eight = run_global(MinHashDedup(), make_pool(uids, captions=texts, scores=scores), 8).column("reject").to_pylist()
    assert one == eight
    assert 20 < sum(r is not None for r in one) <= 80
