"""language_filter on captions with known truth: which English captions it keeps, which
foreign ones it rejects, for the old rule (reject any top guess outside keep_languages)
and for the confidence rule over a sweep of ``min_foreign_score``.

Labelled set, built offline on this machine:

* English alt-texts of web/product kind, generated from templates (one- and two-word
  captions, IMG_1234-style file names, item codes, sizes, colours, SEO "free shipping"
  lines, mixed digits, case variants). Vocabulary is split in two halves by hash:
  the ``tune`` split uses one half, ``holdout`` the other.
* English sentences: WordNet's example sentences (``/usr/share/wordnet``, Debian
  ``wordnet-base``) and English msgids of the gettext catalogs.
* Real non-English captions: translations (msgstr) of ``/usr/share/locale/<lang>/
  LC_MESSAGES/*.mo`` in 41 languages, 3-20 words (6-40 characters for ja/zh/th),
  strings with format codes, markup or mostly untranslated words left out.

Sentences are split into ``tune``/``holdout`` by a hash of their English msgid (or of
the sentence), so one source string is never in both. The default is chosen on ``tune``
(the highest recall that keeps >= 99 % of English alt-texts) and reported on
``holdout``. A rejection is correct when the caption is truly non-English; "(6+ words)"
is the share rejected of non-English captions with at least 6 words (12 characters in
ja/zh/th). The last line is one JSON object with the holdout figures of the old rule and
of the stage's defaults. About a minute on 2 cores, most of it reading the catalogs.

    .venv/bin/python bench/language.py                     # table + one JSON line
    .venv/bin/python bench/language.py --write-sample tests/filters/data/language_captions.tsv
"""

from __future__ import annotations

import argparse
import gettext
import glob
import hashlib
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipcurate.filters.language import LanguageFilter  # noqa: E402

LOCALE = Path("/usr/share/locale")
WORDNET = Path("/usr/share/wordnet/data.noun")
FOREIGN_LANGS = (
    "ar bg ca cs da de el es et eu fa fi fr gl he hi hr hu id it ja ko lt lv nb nl pl pt pt_BR ro ru "
    "sk sl sr sv th tr uk vi zh_CN zh_TW"
).split()
NO_SPACES = {"ja", "zh_CN", "zh_TW", "th"}
SWEEP = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
TARGET_ENGLISH_KEPT = 0.99
OLD = "old: any top guess outside keep"

# ------------------------------------------------------------------ English alt-texts

NOUNS = """T-shirt, tee, tank top, hoodie, sweatshirt, sweater, cardigan, jacket, coat, parka, blazer, vest,
shirt, blouse, polo shirt, dress, maxi dress, skirt, jeans, trousers, pants, shorts, leggings, joggers,
pajamas, bathrobe, swimsuit, bikini, socks, scarf, gloves, mittens, beanie, cap, baseball cap, hat,
sneakers, sneaker, boots, ankle boots, sandals, slippers, loafers, heels, flats, trainers, running shoes,
flip flops, backpack, handbag, tote bag, wallet, purse, belt, sunglasses, watch, necklace, bracelet,
earrings, ring, pendant, keychain, umbrella, suitcase, duffel bag, laptop sleeve, phone case, charger,
USB cable, headphones, earbuds, speaker, keyboard, mouse, monitor, webcam, microphone, tablet stand,
power bank, smartwatch, mug, coffee cup, teapot, kettle, frying pan, saucepan, skillet, cutting board,
knife set, spatula, whisk, blender, toaster, coffee maker, water bottle, lunch box, plate, bowl,
wine glass, tumbler, pillow, cushion, throw blanket, duvet cover, bed sheet, towel, bath mat, rug,
curtain, lamp, candle, vase, picture frame, wall clock, mirror, shelf, bookcase, desk, chair, sofa,
ottoman, side table, storage box, basket, plant pot, toy car, teddy bear, puzzle, board game,
building blocks, doll, kite, yoga mat, dumbbell, jump rope, tennis racket, football, basketball,
bicycle, bike helmet, tent, sleeping bag, lantern, fishing rod, hammer, screwdriver, drill, wrench,
tape measure, garden hose, shampoo, conditioner, lipstick, perfume, face cream, nail polish,
hair dryer, razor, toothbrush, notebook, pen, pencil case, planner, stickers, poster, greeting card,
gift box, dog collar, cat bed, pet bowl, leash, bird feeder, raincoat, overalls, jumpsuit, bodysuit,
tights, apron, oven mitt, teaspoon, fork, ladle, colander, grater, doormat, hanger, laundry basket,
ironing board, sewing kit, flashlight, batteries, extension cord, light bulb, smoke alarm, padlock"""
ADJECTIVES = """slim, cozy, classic, vintage, modern, casual, elegant, soft, warm, lightweight, waterproof,
oversized, fitted, stretch, durable, portable, compact, foldable, wireless, rechargeable, handmade,
organic, premium, luxury, cute, minimalist, rustic, retro, sporty, breathable, insulated, adjustable,
reusable, eco-friendly, non-stick, heavy duty, ergonomic, quick dry, long sleeve, short sleeve,
high waisted, slip-on, lace-up, zip-up, hooded, padded, quilted, knitted, printed, striped, plaid,
floral, graphic, plain, basic, new, best, unisex, kids, mini"""
COLOURS = """red, blue, navy, navy blue, black, white, grey, gray, green, olive, khaki, beige, brown, tan,
pink, rose, purple, lilac, yellow, mustard, orange, coral, teal, turquoise, burgundy, maroon, cream,
ivory, silver, gold, charcoal, mint, sky blue, light grey, dark green"""
MATERIALS = """cotton, linen, wool, merino, cashmere, silk, denim, leather, faux leather, suede, canvas,
nylon, polyester, fleece, velvet, bamboo, ceramic, glass, stainless steel, wooden, oak, plastic,
silicone, rubber, cast iron, porcelain, marble, wicker, jersey, corduroy"""
GENDERS = ("men's", "women's", "kids'", "boys'", "girls'", "mens", "womens", "baby", "unisex")
SIZES = ("XS", "S", "M", "L", "XL", "XXL", "2XL", "3XL", "small", "medium", "large", "one size",
         "US 9", "UK 8", "EU 42", "size 10", "10.5", "32W 30L", "6-12 months", "queen", "king", "twin")
OCCASIONS = ("summer", "winter", "the beach", "travel", "work", "the gym", "hiking", "camping", "parties",
             "weddings", "everyday wear", "the office", "school", "outdoor use", "Christmas", "birthdays")
FEATURES = ("pockets", "a hood", "a zipper", "a lid", "a handle", "a strap", "buttons", "a drawstring",
            "LED light", "USB charging", "a carrying case", "a cover", "a stand", "adjustable straps")
TEMPLATES = (
    "{noun}", "{Noun}", "{noun}", "{colour} {noun}", "{adj} {noun}", "{material} {noun}", "{Colour} {Noun}",
    "IMG_{d4}", "IMG_{d4} {noun}", "IMG_{d4} {Noun}", "DSC{d5}.JPG", "DSC_{d4} {noun}", "photo_{date}.jpg",
    "{noun}_{d4}.jpg", "image-{d3}.png", "PXL_{date}_{d6}", "{Noun} {d4}", "P{d7}",
    "{adj} {noun}, item #{d4}", "SKU {d5} {noun}", "{noun} {LL}-{d3}", "Model {L}{d3} {noun}",
    "Art. {d6} {colour} {noun}", "{noun} ref. {d5}", "{Noun} #{d4}-{LL}", "item {d5}: {adj} {noun}",
    "{noun} size {size}", "{adj} {noun} - {colour} - {size}", "{num} oz {noun}", "{num} x {num} cm {noun}",
    "{gender} {material} {noun} size {size}", "{noun}, {colour}, {size}", "{Gender} {Noun} {size}",
    "buy {adj} {noun} online, free shipping", "cheap {noun} for sale", "best {noun} {year}",
    "{adj} {noun} | free shipping", "new arrival {colour} {noun}", "{noun} sale - up to {pct}% off",
    "shop {colour} {noun} now", "{noun} on sale", "hot sale {adj} {noun}", "{Adj} {Noun} Free Shipping",
    "{adj} {material} {noun} with free delivery", "top rated {noun}", "{noun} deals", "{Noun} - Best Price",
    "{num} pack {noun}", "set of {num} {noun}", "{num}-piece {noun} set", "100% {material} {noun}",
    "{noun} {num}pcs", "{year} {adj} {noun}", "{num}pcs {colour} {noun}",
    "{adj} {colour} {noun} for {gender_plain}", "{colour} {material} {noun} with {feature}",
    "{noun} for {occasion}", "a {colour} {noun} on a white background", "close-up of a {colour} {noun}",
    "{gender} {adj} {noun}", "{Adj} {Material} {Noun}", "{colour} {noun} {size}",
)


def _vocab(text: str) -> list[str]:
    return [w.strip() for w in text.replace("\n", " ").split(",") if w.strip()]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def split_of(key: str) -> str:
    return "holdout" if _hash(key) % 2 else "tune"


def english_alt_texts(split: str, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct alt-texts from the vocabulary half of ``split``, all templates."""
    half = {name: [w for w in _vocab(text) if split_of(w) == split]
            for name, text in (("noun", NOUNS), ("adj", ADJECTIVES), ("colour", COLOURS), ("material", MATERIALS))}
    rng = random.Random(f"{seed}-{split}")
    out: dict[str, None] = {}
    while len(out) < n:
        template = TEMPLATES[len(out) % len(TEMPLATES)]
        fields = {name: rng.choice(words) for name, words in half.items()}
        fields.update({name.capitalize(): value.title() for name, value in fields.items()})
        gender = rng.choice(GENDERS)
        fields.update(
            gender=gender, Gender=gender.title(), gender_plain=rng.choice(("men", "women", "kids", "girls", "boys")),
            size=rng.choice(SIZES), occasion=rng.choice(OCCASIONS), feature=rng.choice(FEATURES),
            num=rng.choice((2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 50)), pct=rng.choice((10, 20, 30, 50, 70)),
            year=rng.randint(2015, 2025), L=rng.choice("ABCDEFGHKMNPRSTXZ"),
            LL="".join(rng.choices("ABCDEFGHKLMNPRSTWXZ", k=2)),
            date=f"{rng.randint(2015, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            **{f"d{k}": "".join(rng.choices("0123456789", k=k)) for k in range(3, 8)},
        )
        caption = template.format(**fields)
        case = rng.random()
        caption = caption.lower() if case < 0.1 else caption.upper() if case < 0.15 else caption
        out.setdefault(caption, None)
    return list(out)


# ------------------------------------------------------------------ real sentences

_UNSAFE = re.compile(r"[%\n\t{}<>\\/=$|@`\[\]#*\x04]|--|https?:|\s\s")
_ACCELERATOR = re.compile(r"\(_?[A-Za-z]\)|_|&")


def _tidy(text: str) -> str:
    return _ACCELERATOR.sub("", text).strip().rstrip(":.").strip()


def _letters_words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[^\W\d_]+", text)]


def _catalog(path: str):
    try:
        with open(path, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog
    except (OSError, UnicodeDecodeError, ValueError):
        return
    for msgid, msgstr in catalog.items():
        if isinstance(msgid, str) and msgid and msgstr and not _UNSAFE.search(msgid) and not _UNSAFE.search(msgstr):
            yield _tidy(msgid), _tidy(msgstr)


def _caption_length(text: str, lang: str) -> bool:
    if lang in NO_SPACES:
        return 6 <= len(text) <= 40
    return 3 <= len(text.split()) <= 20


def foreign_captions(per_lang: int) -> list[dict]:
    """Up to ``per_lang`` translations per language and split from the .mo catalogs."""
    rows = []
    for lang in FOREIGN_LANGS:
        found: dict[str, tuple[str, str]] = {}
        for path in sorted(glob.glob(str(LOCALE / lang / "LC_MESSAGES" / "*.mo"))):
            package = os.path.basename(path)[:-3]
            if package.startswith("iso_"):  # country and language names, not sentences
                continue
            for msgid, msgstr in _catalog(path):
                if msgstr == msgid or not _caption_length(msgstr, lang):
                    continue
                source, target = set(_letters_words(msgid)), _letters_words(msgstr)
                if target and sum(w in source for w in target) > 0.3 * len(target):
                    continue  # mostly untranslated (product names, commands)
                found.setdefault(msgstr, (package, msgid))
        ordered = sorted(found.items(), key=lambda item: _hash(item[0]))
        for split in ("tune", "holdout"):
            picked = [(text, src) for text, src in ordered if split_of(src[1]) == split][:per_lang]
            rows += [dict(caption=t, truth=lang, kind="foreign", split=split, source=src[0]) for t, src in picked]
    return rows


def english_sentences(per_source: int) -> list[dict]:
    """WordNet example sentences and English msgids, 3-20 words, per split."""
    rows = []
    examples: dict[str, None] = {}
    if WORDNET.exists():
        for line in WORDNET.read_text(encoding="utf-8", errors="replace").splitlines():
            if "|" in line and not line.startswith("  "):
                for text in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                    if 3 <= len(text.split()) <= 20:
                        examples.setdefault(text.strip(), None)
    msgids: dict[str, None] = {}
    for path in sorted(glob.glob(str(LOCALE / "de" / "LC_MESSAGES" / "*.mo"))):
        if not os.path.basename(path).startswith("iso_"):
            for msgid, _ in _catalog(path):
                if 3 <= len(msgid.split()) <= 20 and len(_letters_words(msgid)) >= 3:
                    msgids.setdefault(msgid, None)
    for source, texts in (("wordnet", examples), ("msgid", msgids)):
        ordered = sorted(texts, key=_hash)
        for split in ("tune", "holdout"):
            picked = [t for t in ordered if split_of(t) == split][:per_source]
            rows += [dict(caption=t, truth="en", kind="english_sentence", split=split, source=source) for t in picked]
    return rows


def labelled_set(n_alt: int, per_lang: int, per_source: int) -> list[dict]:
    rows = [dict(caption=c, truth="en", kind="english_alt", split=split, source="template")
            for split in ("tune", "holdout") for c in english_alt_texts(split, n_alt)]
    return rows + english_sentences(per_source) + foreign_captions(per_lang)


# ------------------------------------------------------------------ measuring


def run_stage(captions: list[str], **params) -> tuple[np.ndarray, pa.Table]:
    """Which of ``captions`` the stage rejects with keep_languages [en] and ``params``, and its output."""
    batch = pa.table({"uid": [str(i) for i in range(len(captions))], "caption": captions})
    out = LanguageFilter(keep_languages=["en"], **params)(batch)
    return out.column("reject").is_valid().to_numpy(zero_copy_only=False), out


def figures(rejected: np.ndarray, kind: np.ndarray, long: np.ndarray) -> dict:
    """English kept and precision/recall of rejections (correct: truly non-English)."""
    foreign = kind == "foreign"
    true_rejections = int((rejected & foreign).sum())
    return {
        "english_kept": round(float(1 - rejected[kind == "english_alt"].mean()), 4),
        "sentences_kept": round(float(1 - rejected[kind == "english_sentence"].mean()), 4),
        "foreign_rejected": round(float(rejected[foreign].mean()), 4),
        "foreign_rejected_6plus": round(float(rejected[foreign & long].mean()), 4),
        "precision": round(true_rejections / max(int(rejected.sum()), 1), 4),
        "recall": round(true_rejections / max(int(foreign.sum()), 1), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alt-texts", type=int, default=1500, help="English alt-texts per split (default 1500)")
    parser.add_argument("--per-lang", type=int, default=60,
                        help="non-English captions per language and split (default 60)")
    parser.add_argument("--per-source", type=int, default=500,
                        help="English sentences per source (WordNet, msgids) and split (default 500)")
    parser.add_argument("--write-sample", metavar="TSV", help="write a small labelled sample (for the tests) and exit")
    args = parser.parse_args(argv)
    if args.write_sample:
        return write_sample(args.write_sample)

    started = time.perf_counter()
    rows = labelled_set(args.alt_texts, args.per_lang, args.per_source)
    kind = np.array([r["kind"] for r in rows])
    if not (kind == "foreign").any():
        sys.exit(f"no gettext catalogs under {LOCALE}: no non-English captions to measure with")
    split = np.array([r["split"] for r in rows])
    long = np.array([len(r["caption"]) >= 12 if r["truth"] in NO_SPACES else len(r["caption"].split()) >= 6
                     for r in rows])
    captions = [r["caption"] for r in rows]
    print(f"labelled set: {(kind == 'english_alt').sum()} English alt-texts, {(kind == 'english_sentence').sum()} "
          f"English sentences, {(kind == 'foreign').sum()} non-English captions in {len(FOREIGN_LANGS)} languages; "
          f"half tune, half holdout ({time.perf_counter() - started:.1f} s to build)\n")

    header = (f"{'rule (keep_languages: [en])':42} {'split':8} {'en alt kept':>11} {'en sent kept':>12} "
              f"{'foreign rej':>11} {'(6+ words)':>10} {'precision':>9} {'recall':>7}")
    print(header + "\n" + "-" * len(header))
    results: dict[tuple, dict] = {}

    def measure(name: str, rejected: np.ndarray) -> None:
        for part in ("tune", "holdout"):
            m = split == part
            f = results[(name, part)] = figures(rejected[m], kind[m], long[m])
            print(f"{name:42} {part:8} {f['english_kept']:11.2%} {f['sentences_kept']:12.2%} "
                  f"{f['foreign_rejected']:11.2%} {f['foreign_rejected_6plus']:10.2%} {f['precision']:9.2%} "
                  f"{f['recall']:7.2%}")

    measure(OLD, run_stage(captions, min_foreign_score=0.0, min_words=0)[0])
    for t in SWEEP:
        measure(f"min_foreign_score={t} min_words=3", run_stage(captions, min_foreign_score=t, min_words=3)[0])
    ok = [t for t in SWEEP if results[(f"min_foreign_score={t} min_words=3", "tune")]["english_kept"]
          >= TARGET_ENGLISH_KEPT]
    chosen = max(ok, key=lambda t: results[(f"min_foreign_score={t} min_words=3", "tune")]["recall"]) if ok else None
    if chosen is not None:
        for w in (0, 1, 2, 4):
            measure(f"min_foreign_score={chosen} min_words={w}",
                    run_stage(captions, min_foreign_score=chosen, min_words=w)[0])
    # The simpler alternative: the top guess's own probability (k=1) instead of the top-3 sum.
    judged_foreign, out = run_stage(captions, min_foreign_score=0.0, min_words=3)
    top_score = out.column("lang_score").fill_null(0).to_numpy(zero_copy_only=False)
    for t in SWEEP:
        measure(f"alternative: lang_score>={t} min_words=3", judged_foreign & (top_score >= t))

    default = LanguageFilter.Config()
    print(f"\nchosen on tune: min_foreign_score={chosen} (highest recall with English alt-texts kept >= "
          f"{TARGET_ENGLISH_KEPT:.0%}, min_words=3); the stage's defaults: min_foreign_score="
          f"{default.min_foreign_score}, min_words={default.min_words}. Figures below: holdout split.")
    holdout = split == "holdout"
    new = figures(run_stage(captions)[0][holdout], kind[holdout], long[holdout])
    print(json.dumps({"split": "holdout", "old": results[(OLD, "holdout")], "new": new,
                      "chosen_threshold": chosen, "default_threshold": default.min_foreign_score,
                      "min_words": default.min_words, "rows": int(holdout.sum()),
                      "seconds": round(time.perf_counter() - started, 1)}))
    return 0


def write_sample(path: str) -> int:
    """A few hundred rows for the tests, from the holdout split: alt-texts, sentences, foreign captions."""
    rng = random.Random(0)
    rows = [r for r in labelled_set(150, 8, 60) if r["split"] == "holdout"]
    alt = [r for r in rows if r["kind"] == "english_alt"]
    sentences = [r for r in rows if r["kind"] == "english_sentence"]
    foreign = [r for r in rows if r["kind"] == "foreign"]
    sample = alt + rng.sample(sentences, min(60, len(sentences))) + foreign
    packages = sorted({r["source"] for r in foreign})
    with open(path, "w", encoding="utf-8") as f:
        f.write("# Labelled captions for tests/filters/test_language.py, written by\n"
                "# bench/language.py --write-sample. english_alt: generated by bench/language.py (templates).\n"
                "# english_sentence: WordNet 3.0 example sentences (Debian wordnet-base, WordNet licence) and\n"
                "# gettext msgids. foreign: translations (msgstr) from Debian's\n"
                "# /usr/share/locale/<truth>/LC_MESSAGES/<source>.mo (GPL/LGPL translation strings) of the\n"
                "# catalogs " + ", ".join(packages) + ".\n")
        f.write("kind\ttruth\tsource\tcaption\n")
        for r in sample:
            f.write(f"{r['kind']}\t{r['truth']}\t{r['source']}\t{r['caption']}\n")
    print(f"wrote {len(sample)} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
