"""Model specs that point at the object store: `s3://bucket/prefix` folders download once into the cache."""

import pytest

from codepmp.errors import InputError
from codepmp.models import load_reward_model, resolve
from codepmp.storage import ObjectStore
from codepmp.testing import write_tiny_model


@pytest.mark.integration
def test_s3_model_folder_resolves_to_a_cached_local_copy(stack_env, tmp_path, monkeypatch):
    monkeypatch.setenv("CODEPMP_MODEL_CACHE", str(tmp_path / "cache"))
    store = ObjectStore.from_env()
    store.ensure_bucket()
    store.upload_dir(write_tiny_model(tmp_path / "rm", reward=True), "models/tiny-rm")
    uri = f"s3://{store.bucket}/models/tiny-rm"

    local = resolve(uri)
    assert local.startswith(str(tmp_path / "cache")) and resolve(uri) == local  # second call: the cache
    model, tokenizer = load_reward_model(uri)
    assert model.config.num_labels == 1 and tokenizer.pad_token == tokenizer.eos_token

    with pytest.raises(InputError, match="models/nothing"):
        resolve(f"s3://{store.bucket}/models/nothing")


def test_bad_model_specs_are_clear(tmp_path):
    with pytest.raises(InputError, match="has no config.json"):
        resolve(str(tmp_path))
    with pytest.raises(InputError, match="not a packaged alias"):
        resolve("no-such-model")
