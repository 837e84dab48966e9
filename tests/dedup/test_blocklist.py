"""The blocklist stage and its files (issue 16): what a takedown or an earlier review
removed never comes back, each kind checked where it can be."""

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.dedup.blocklist import BlocklistFilter
from clipcurate.dedup.perceptual import image_hash
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.release import normalise_url, read_blocklist


def pool(uids, urls, images=None, reject=None) -> pa.Table:
    n = len(uids)
    return pa.table({"uid": uids, "url": urls, "caption": ["c"] * n,
                     "image": pa.array(images or [None] * n, pa.binary()),
                     "reject": pa.array(reject or [None] * n, pa.string())})


def test_every_kind_is_refused_with_its_own_reason(tmp_path, images, reasons_of):
    blocked_png = images.png(40)
    near = image_hash(images.png(41), "phash")
    listing = tmp_path / "takedowns.txt"
    listing.write_text("# takedown 2024-05\n"
                       "url:HTTP://Bad.Example.com:80/a.jpg#frag\n"
                       f"sha256:{hashlib.sha256(blocked_png).hexdigest().upper()}\n"
                       f"phash:{near:016x}\n"
                       "uid:u_blocked\n")
    batch = pool(
        ["u_url", "u_sha", "u_phash", "u_blocked", "u_ok", "u_other_path", "u_done"],
        ["http://bad.example.com/a.jpg", "http://x/1", "http://x/2", "http://x/3", "http://x/4",
         "http://bad.example.com/A.jpg", "http://bad.example.com/a.jpg"],
        images=[None, blocked_png, images.jpeg(41, 80), None, images.png(42), images.png(43), None],
        reject=[None] * 6 + ["basic_filter:too_small"],
    )
    out = BlocklistFilter(paths=[str(listing)])(batch)
    assert reasons_of(out) == {
        "u_url": "blocklist:url",
        "u_sha": "blocklist:sha256",
        "u_phash": f"blocklist:phash={near:016x}",
        "u_blocked": "blocklist:uid",
        "u_ok": None,
        "u_other_path": None,  # paths are case-sensitive
        "u_done": "basic_filter:too_small",  # an earlier reason wins
    }
    assert out.column("image").is_null().to_pylist()[:3] == [True, True, True]


def test_check_limits_the_kinds_and_tables_are_read(tmp_path, images, reasons_of):
    pq.write_table(pa.table({"url": ["http://x/1", None], "sha256": [None, hashlib.sha256(images.png(1)).hexdigest()]}),
                   tmp_path / "review.parquet")
    (tmp_path / "more.csv").write_text("uid,phash\nu3,\n")
    paths = [str(tmp_path / "review.parquet"), str(tmp_path / "more.csv")]
    blocked = read_blocklist(paths)
    assert (len(blocked.url), len(blocked.sha256), len(blocked.uid), len(blocked.phash)) == (1, 1, 1, 0)
    batch = pool(["u1", "u2", "u3"], ["http://x/1", "http://x/2", "http://x/3"], images=[None, images.png(1), None])
    before_download = BlocklistFilter(paths=paths, check=["uid", "url"])(batch)
    assert reasons_of(before_download) == {"u1": "blocklist:url", "u2": None, "u3": "blocklist:uid"}
    after = BlocklistFilter(paths=paths, check=["sha256", "phash"])(batch)
    assert reasons_of(after) == {"u1": None, "u2": "blocklist:sha256", "u3": None}


def test_phash_radius_is_the_measured_one(tmp_path, images):
    value = image_hash(images.png(7), "phash")
    listing = tmp_path / "b.txt"
    listing.write_text(f"phash:{value ^ 0b111:016x}\n")  # three bits away
    batch = pool(["a"], ["http://x/a"], images=[images.png(7)])
    assert BlocklistFilter(paths=[str(listing)])(batch).column("reject").to_pylist() == [None]  # radius 2
    wide = BlocklistFilter(paths=[str(listing)], phash_max_distance=4)(batch)
    assert wide.column("reject").to_pylist() == [f"blocklist:phash={value ^ 0b111:016x}"]


def test_bad_lines_and_urls():
    assert normalise_url("HTTPS://Example.COM:443/p?q=1#x") == "https://example.com/p?q=1"
    assert normalise_url("http://example.com:8080") == "http://example.com:8080/"
    assert normalise_url("not a url") == "not a url"


def test_bad_blocklist_line_names_the_line(tmp_path):
    listing = tmp_path / "b.txt"
    listing.write_text("url:http://x/1\nhttp://x/2\n")
    with pytest.raises(UserError, match=r"b.txt:2"):
        read_blocklist([str(listing)])


def test_recipe_blocklist_checks_urls_before_the_download_and_hashes_after(tmp_path):
    listing = tmp_path / "b.txt"
    listing.write_text("url:http://x/1\n")
    raw = {"stages": [{"download": {}}, {"basic_filter": {}}], "blocklist": [str(listing)]}
    _, stages = parse_recipe(raw)
    assert [(s.label, s.config.check if s.name == "blocklist" else None) for s in stages] == [
        ("blocklist", ("uid", "url")), ("download", None), ("blocklist_image", ("sha256", "phash")),
        ("basic_filter", None)]
    _, no_download = parse_recipe({"stages": [{"dedup_exact": {}}], "blocklist": [str(listing)]})
    assert [s.label for s in no_download] == ["blocklist", "dedup_exact"]
    assert set(no_download[0].config.check) == {"uid", "url", "sha256", "phash"}


def test_a_takedown_names_the_image_as_served_not_as_stored(tmp_path, images, reasons_of):
    """The download re-encodes: a takedown's sha256 of the original file matches the
    download's ``source_sha256``, though no stored byte equals the original."""
    original = images.png(40)
    listing = tmp_path / "takedowns.txt"
    listing.write_text(f"sha256:{hashlib.sha256(original).hexdigest()}\n")
    batch = pool(["u_taken", "u_ok"], ["http://x/1", "http://x/2"], images=[images.jpeg(40, 80), images.png(42)])
    batch = batch.append_column("source_sha256", pa.array([hashlib.sha256(original).hexdigest(), "0" * 64]))
    out = BlocklistFilter(paths=[str(listing)], check=["sha256"])(batch)
    assert reasons_of(out) == {"u_taken": "blocklist:sha256", "u_ok": None}
