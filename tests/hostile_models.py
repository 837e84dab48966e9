"""Model folders as an attacker would hand them over: a checkpoint whose tokenizer asks
transformers to import a ``tokenization_*.py`` of the folder (the payload only writes a
marker file), and torch files that declare more than they hold."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import torch

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 16, "layers": 1, "head_width": 8, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1, "mlp_ratio": 2.0}}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "dog", "photo", "of"]


def remote_code_checkpoint(folder: Path, marker: Path) -> Path:
    """A working checkpoint (random weights) whose config turns ``trust_remote_code`` on and
    whose tokenizer files point ``AutoTokenizer`` at the folder's own code, which would
    write ``marker`` when imported."""
    from clipcurate.train.clip_model import build_from_config, save_checkpoint

    config = {"model_cfg": json.loads(json.dumps(TINY)), "preprocess_cfg": {}}
    save_checkpoint(build_from_config(config), folder, config=config)
    text_cfg = config["model_cfg"]["text_cfg"]
    text_cfg.update(hf_tokenizer_name=str(folder), tokenizer_kwargs={"trust_remote_code": True})
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True,
        "auto_map": {"AutoTokenizer": ["tokenization_payload.PayloadTokenizer", None]}}))
    (folder / "tokenization_payload.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertTokenizer\n"
        # a subclass of its own: transformers marks a remote class for auto-saving, and
        # marking BertTokenizer itself would change how every later test saves one
        "class PayloadTokenizer(BertTokenizer):\n    pass\n")
    return folder


def inflated_torch_file(path: Path, *, numel: int = 10**9) -> Path:
    """A zip-format torch file whose single entry is deflated: tiny on disk, ``numel``
    float32 zeros once inflated."""
    torch.save({"w": torch.zeros(numel // 1000)}, path.with_suffix(".src"))
    with zipfile.ZipFile(path.with_suffix(".src")) as source, \
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))
    path.with_suffix(".src").unlink()
    return path


def legacy_torch_file(path: Path) -> Path:
    """A file in torch's pre-1.6 format (not a zip)."""
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    return path


def faiss_header_declaring(dim: int, vectors: int) -> bytes:
    """An ``IndexFlatIP`` file of a few dozen bytes whose header declares ``vectors`` vectors."""
    import faiss

    header = bytearray(faiss.serialize_index(faiss.IndexFlatIP(dim)).tobytes())
    header[8:16] = struct.pack("<q", vectors)  # ntotal
    header[37:45] = struct.pack("<Q", vectors * dim)  # the codes vector's length, in floats
    return bytes(header) + b"\0" * 16
