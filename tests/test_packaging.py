"""The installed project is one top-level package, `clipcurate`, whatever the repo layout."""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("pipelines", "curation", "filters", "dedup", "train")


def test_every_package_folder_is_declared():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    found = {"clipcurate." + ".".join(p.parent.relative_to(REPO).parts)
             for room in ROOMS for p in (REPO / room).rglob("__init__.py")}
    assert found <= declared, f"add to pyproject.toml [tool.setuptools] packages: {sorted(found - declared)}"
    assert config["package-dir"] == {f"clipcurate.{room}": room for room in ROOMS}


def test_wheel_adds_one_top_level_package(tmp_path):
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO / name).read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("clipcurate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"clipcurate", next(t for t in top if t.endswith(".dist-info"))}
    assert "clipcurate/pipelines/recipes/recommended.yaml" in names
    assert "clipcurate/train/configs/clip-tiny.json" in names
