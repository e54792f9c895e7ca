"""Helpers for tests: tiny random models that build offline in about a second.

    from codepmp.testing import write_tiny_model
    lm_dir = write_tiny_model(tmp_path / "lm", reward=False)
    rm_dir = write_tiny_model(tmp_path / "rm", reward=True)

Both folders load with `AutoTokenizer` plus `AutoModelForCausalLM` / `AutoModelForSequenceClassification`.
The tokenizer is a byte-level BPE (any text encodes, nothing is unknown), its pad token is its eos
token, and it carries a small chat template so instruct-style code paths run too.
"""

from __future__ import annotations

from pathlib import Path

EOS_TOKEN = "</s>"
TINY_PAIR_MAX_LENGTH = 256
"""A training max_length that fits a code pair's whole prompt in the tiny tokenizer, which spends a token per
character or two (truncation keeps the prompt, and at 128 no code pair fits)."""
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TRAINING_TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
    "Instruction: Natalia sold 48 clips in April and half as many in May. How many in total?\n",
    "Response: 48 / 2 = 24. 48 + 24 = 72. The answer is 72.\n",
    "### Instruction: Please read the following code description carefully.\n### Response:",
]


QWEN_EOS, QWEN_PAD = "<|im_end|>", "<|endoftext|>"
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(vocab_size: int = 384, qwen: bool = False):
    """Return a `PreTrainedTokenizerFast` with a byte-level BPE trained on a few code and math strings; with
    `qwen`, Qwen2.5's special tokens: end of turn `<|im_end|>` as eos, a separate `<|endoftext|>` pad, no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[QWEN_EOS, QWEN_PAD, "<|im_start|>"] if qwen else [EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TRAINING_TEXTS, trainer=trainer)
    eos, pad = (QWEN_EOS, QWEN_PAD) if qwen else (EOS_TOKEN, EOS_TOKEN)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, pad_token=pad, model_max_length=512)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE if qwen else CHAT_TEMPLATE
    return tokenizer


def tiny_llama_config(vocab_size: int, eos_token_id: int, reward: bool):
    """Return a 2-layer, 32-wide `LlamaConfig`; with `reward` a 1-label regression head."""
    from transformers import LlamaConfig

    extra = {"num_labels": 1, "problem_type": "regression"} if reward else {}
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def tiny_qwen2_config(vocab_size: int, eos_token_id: int, reward: bool):
    """A 2-layer, 32-wide `Qwen2Config` shaped like Qwen2.5's small models: tied embeddings (as Qwen2.5-0.5B has
    upstream; the GGUF conversion saves an untied head, which the Llama tiny model covers), q/k/v biases, no BOS
    token (Qwen tokenizers add none), and eos, the end-of-turn token, as pad id, because `load_tokenizer` pads
    with eos (the packaged Qwen configs name `<|endoftext|>` as pad)."""
    from transformers import Qwen2Config

    extra = {"num_labels": 1, "problem_type": "regression"} if reward else {}
    return Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=None, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
                       tie_word_embeddings=True, use_sliding_window=False, **extra)


def write_tiny_model(path: str | Path, reward: bool = False, seed: int = 0, arch: str = "llama") -> Path:
    """Save a tiny random causal LM (or, with `reward`, a 1-label reward model) plus tokenizer to `path`;
    `arch` "llama" (untied head, BOS = EOS) or "qwen2" (the Qwen2.5 family's shape, see `tiny_qwen2_config`)."""
    import torch
    from transformers import (LlamaForCausalLM, LlamaForSequenceClassification, Qwen2ForCausalLM,
                              Qwen2ForSequenceClassification)

    classes = {"llama": (tiny_llama_config, LlamaForCausalLM, LlamaForSequenceClassification),
               "qwen2": (tiny_qwen2_config, Qwen2ForCausalLM, Qwen2ForSequenceClassification)}
    make_config, lm_class, rm_class = classes[arch]
    path = Path(path)
    tokenizer = build_tiny_tokenizer(qwen=arch == "qwen2")
    config = make_config(len(tokenizer), tokenizer.eos_token_id, reward)
    torch.manual_seed(seed)
    model_class = rm_class if reward else lm_class
    model = model_class(config)
    if not reward:
        model.generation_config.pad_token_id = tokenizer.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_random_model(config_dir: str | Path, path: str | Path, dtype=None, seed: int = 0) -> Path:
    """Save a causal LM of `config_dir`'s config.json with random weights, plus that folder's tokenizer (and chat
    template), to `path`: a real model's shape and tokenizer without its weights, for timing where the weights
    cannot travel. Initialised on the GPU when there is one (a 1.5B model initialises slowly on the CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=dtype)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(path)
    return Path(path)
