"""``liveidol models``: the known open weights of the Wan tier, pulled into a local cache and verified.

Each :class:`Recipe` names a Hugging Face repository, the files LiveIdol needs from it (with their sizes
and sha256 where they are published or recorded; else size only, or neither, and the listing says so),
and the config key that takes the local path. Files go to ``~/.cache/liveidol/models/<recipe>/`` (or
``$LIVEIDOL_MODELS``), keeping their paths in the repository; ``huggingface_hub`` downloads them
(``$HF_ENDPOINT`` picks a mirror, ``$HF_TOKEN`` a token; neither is logged). Offline, the error says which
URL to fetch elsewhere and where to copy it; ``verify`` then checks what was copied.

Usage::

    liveidol models list
    liveidol models pull self-forcing-dmd      # also: wan-vae, taehv, umt5-xxl, causvid, longlive, causal-forcing
    liveidol models verify                     # every pulled recipe: present, sizes, sha256
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from backend.errors import LiveIdolError

__all__ = ["RECIPES", "FileStatus", "HubError", "HubFile", "Recipe", "cache_dir", "local_path", "pull", "verify"]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"


class HubError(LiveIdolError, RuntimeError):
    """A recipe is unknown, a download failed, or a file is missing or damaged."""


@dataclass(frozen=True)
class HubFile:
    path: str  # inside the repository
    size: int | None = None  # bytes; None: not recorded
    sha256: str | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    repo: str
    files: tuple[HubFile, ...]
    what: str
    license: str
    key: str  # the config key that takes local_path()
    target: str = ""  # the file the key points at ('' = the recipe's folder)
    revision: str | None = None  # a pinned commit (the recorded hashes are of it); None = main
    note: str = ""
    provenance: str = ""  # where the sizes / hashes come from

    @property
    def sizes_known(self) -> str:
        hashed = sum(f.sha256 is not None for f in self.files)
        sized = sum(f.size is not None for f in self.files)
        n = len(self.files)
        if hashed == n:
            return "size+sha256"
        if sized == n:
            return "size only" if not hashed else "size, some sha256"
        return "not recorded" if not sized else "partly recorded"


_WAN_REV = "37ec512624d61f7aa208f7ea8140a131f93afc9a"
_WAN_PROV = ("sizes and sha256 of Wan-AI/Wan2.1-T2V-1.3B at 37ec512 as recorded by third-party download manifests "
             "(not measured here)")
RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("self-forcing-dmd", "gdhe17/Self-Forcing", (HubFile("checkpoints/self_forcing_dmd.pt"),),
           "Self-Forcing DMD: the 4-step causal Wan2.1-T2V-1.3B (the default of --model wan-1.3b)", "Apache-2.0",
           "model.checkpoint", "checkpoints/self_forcing_dmd.pt",
           note="holds generator_ema; loaded as it is", provenance="size and hash not published: checked by loading"),
    Recipe("causvid", "tianweiy/CausVid", (HubFile("autoregressive_checkpoint_warp_4step_cfg2/model.pt"),),
           "CausVid: causal DMD Wan2.1-T2V-1.3B, 4 warped steps", "CC BY-NC-SA 4.0 (non-commercial)",
           "model.checkpoint", "autoregressive_checkpoint_warp_4step_cfg2/model.pt",
           note="sampled at shift 8: --set model.shift=8.0 (its 'generator' weights are loaded)",
           provenance="size and hash not published: checked by loading"),
    Recipe("longlive", "Efficient-Large-Model/LongLive-1.3B", (HubFile("models/longlive_base.pt"),),
           "LongLive base (frame sink, long streams)", "non-commercial (see the model card)", "model.checkpoint",
           "models/longlive_base.pt",
           note="the base weights only: LongLive's LoRA (models/lora.pt) is not merged by LiveIdol yet",
           provenance="size and hash not published: checked by loading"),
    Recipe("causal-forcing", "zhuhz22/Causal-Forcing", (HubFile("chunkwise/causal_forcing.pt"),),
           "Causal Forcing (chunk-wise, 4 steps)", "Apache-2.0", "model.checkpoint", "chunkwise/causal_forcing.pt",
           provenance="size and hash not published: checked by loading"),
    Recipe("wan-vae", "Wan-AI/Wan2.1-T2V-1.3B",
           (HubFile("Wan2.1_VAE.pth", 507_609_880, "38071ab59bd94681c686fa51d75a1968f64e470262043be31f7a094e442fd981"),),
           "the Wan2.1 VAE: encodes the avatar image, decodes with model.wan.decoder = 'vae'", "Apache-2.0",
           "model.wan.vae", "Wan2.1_VAE.pth", revision=_WAN_REV, provenance=_WAN_PROV),
    Recipe("umt5-xxl", "Wan-AI/Wan2.1-T2V-1.3B",
           (HubFile("models_t5_umt5-xxl-enc-bf16.pth", 11_361_920_418,
                    "7cace0da2b446bbbbc57d031ab6cf163a3d59b366da94e5afe36745b746fd81d"),
            HubFile("google/umt5-xxl/special_tokens_map.json"), HubFile("google/umt5-xxl/spiece.model"),
            HubFile("google/umt5-xxl/tokenizer.json"), HubFile("google/umt5-xxl/tokenizer_config.json")),
           "umT5-XXL text encoder (Wan's bf16 encoder file + the google/umt5-xxl tokenizer)", "Apache-2.0",
           "model.wan.text_encoder", revision=_WAN_REV,
           provenance=_WAN_PROV + "; the tokenizer files' sizes are not recorded"),
    Recipe("taehv", "lightx2v/Autoencoders",
           (HubFile("taew2_1.pth", 22_679_486, "f986092baa4a124035dcf44ef59cd30e0bef91b2aa4d6a6e8e152e55e82ca30c"),),
           "TAEHV taew2_1: the tiny real-time decoder for Wan2.1 latents (madebyollin/taehv, MIT)", "MIT",
           "model.wan.taehv", "taew2_1.pth", revision="b42886995deccb94b8c65b7c89e7eaf1fd95e0a9",
           provenance="size and sha256 from the repository's LFS pointer at commit b428869"),
)}


def cache_dir() -> Path:
    """``$LIVEIDOL_MODELS`` or ``~/.cache/liveidol/models``."""
    return Path(os.environ.get("LIVEIDOL_MODELS") or Path.home() / ".cache" / "liveidol" / "models").expanduser()


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise HubError(f"unknown model {name!r} (known: {', '.join(RECIPES)})") from None


def local_path(name: str, root: Path | None = None) -> Path:
    """What the recipe's config key takes: the target file, or the recipe's folder."""
    r = recipe(name)
    folder = (root or cache_dir()) / r.name
    return folder / r.target if r.target else folder


@dataclass(frozen=True)
class FileStatus:
    recipe: str
    path: Path
    ok: bool
    problem: str = ""  # '' when ok


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_file(r: Recipe, f: HubFile, path: Path, *, hashes: bool = True) -> FileStatus:
    if not path.is_file():
        return FileStatus(r.name, path, False, "missing")
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        return FileStatus(r.name, path, False, f"size {size:,} bytes, expected {f.size:,}")
    if hashes and f.sha256 is not None:
        digest = _sha256(path)
        if digest != f.sha256:
            return FileStatus(r.name, path, False, f"sha256 {digest[:16]}..., expected {f.sha256[:16]}...")
    return FileStatus(r.name, path, True)


def verify(names: list[str] | None = None, *, root: Path | None = None, hashes: bool = True) -> list[FileStatus]:
    """Check every file of ``names`` (default: each recipe with a folder in the cache)."""
    root = root or cache_dir()
    if names is None:
        names = [n for n in RECIPES if (root / n).is_dir()]
    out: list[FileStatus] = []
    for name in names:
        r = recipe(name)
        out.extend(check_file(r, f, root / r.name / f.path, hashes=hashes) for f in r.files)
    return out


def offline_help(r: Recipe, f: HubFile, root: Path, endpoint: str) -> str:
    rev = r.revision or "main"
    return (f"fetch {endpoint}/{r.repo}/resolve/{rev}/{f.path} on a machine that is online and copy it to "
            f"{root / r.name / f.path}, then run `liveidol models verify {r.name}`")


def pull(name: str, *, root: Path | None = None, endpoint: str | None = None) -> list[FileStatus]:
    """Download ``name``'s files (skipping those already there and valid), then verify them all.

    Raises :class:`HubError` with what to do by hand when the hub cannot be reached."""
    r = recipe(name)
    root = root or cache_dir()
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    folder = root / r.name
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise HubError(f"huggingface_hub is not installed (pip install -e '.[wan]'); or "
                       f"{offline_help(r, r.files[0], root, endpoint)}") from exc
    for f in r.files:
        if check_file(r, f, folder / f.path).ok:
            log.info("already there model=%s file=%s", r.name, f.path)
            continue
        log.info("downloading model=%s repo=%s file=%s size=%s", r.name, r.repo, f.path,
                 f"{f.size:,}" if f.size else "unknown")
        try:
            hf_hub_download(r.repo, f.path, revision=r.revision, local_dir=str(folder), endpoint=endpoint)
        except Exception as exc:  # offline, 404, auth, disk: every case gets the same way out
            kind = type(exc).__name__
            raise HubError(f"{r.name}: could not download {r.repo}/{f.path} from {endpoint} ({kind}: "
                           f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). Offline? "
                           f"{offline_help(r, f, root, endpoint)}") from exc
    statuses = verify([r.name], root=root)
    bad = [s for s in statuses if not s.ok]
    if bad:
        raise HubError(f"{r.name}: downloaded but {bad[0].path} is wrong: {bad[0].problem} "
                       "(delete it and pull again)")
    return statuses


def run_models(command: str, names: str | list[str] | None) -> int:
    """``liveidol models list | pull NAME | verify [NAME ...]``: prints a table; 0 = all good, 1 = a bad file."""
    root = cache_dir()
    if command == "list":
        print(f"cache: {root}  (set LIVEIDOL_MODELS to move it)")
        for r in RECIPES.values():
            files = verify([r.name], root=root, hashes=False)
            there = "pulled" if all(s.ok for s in files) else "partial" if any(s.ok for s in files) else "-"
            size = sum(f.size or 0 for f in r.files)
            shown = f"{size / 2**30:6.2f} GiB" if size else "size not published"
            print(f"{r.name:17} {there:8} {r.repo}  {shown}  [{r.sizes_known}]  {r.license}")
            print(f"{'':17} {r.what}; --set {r.key}={local_path(r.name, root)}")
            if r.note:
                print(f"{'':17} note: {r.note}")
        return 0
    if command == "pull":
        assert isinstance(names, str)
        statuses = pull(names, root=root)
        r = recipe(names)
        for s in statuses:
            print(f"ok {s.path}")
        print(f"use it: --set {r.key}={local_path(r.name, root)}")
        return 0
    if command == "verify":
        chosen = list(names) if isinstance(names, list) and names else None
        statuses = verify(chosen, root=root)
        if not statuses:
            print(f"nothing pulled in {root} (liveidol models pull NAME)")
            return 0
        for s in statuses:
            print(f"{'ok' if s.ok else 'BAD':3} {s.recipe:17} {s.path}" + (f"  {s.problem}" if s.problem else ""))
        return 0 if all(s.ok for s in statuses) else 1
    raise HubError(f"unknown models command {command!r}")
