"""Typed configuration: one dataclass per stage, grouped in `PipelineConfig`, plus named profiles.

    from codepmp.config import load_config
    cfg = load_config("tiny", {"pretrain": {"lr": 1e-5}})

Unknown keys fail fast (`ConfigError` names the key), so a typo never silently falls back to a default.
Profiles: `tiny` (tests, a couple of minutes), `local` (`make run` on 2 CPU cores), `qwen` (the paper's model
family at CPU scale: Qwen2.5-Coder 0.5B/1.5B from packaged weights), `paper` (cluster, the paper's models and
hyperparameters).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from codepmp.errors import ConfigError


def nonnegative(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field of counts or sizes (for a list, of each item): never negative, where 0 often means "all" or "off".
    A negative value is refused when a config is loaded, naming the key."""
    return field(default=default, default_factory=default_factory, metadata={"nonnegative": True})


@dataclass
class GitHubConfig:
    """The `github` crawl source: REST repository search, then one tarball per repository at a pinned commit."""

    api_url: str = "https://api.github.com"
    """REST API root; point it at GitHub Enterprise (`https://HOST/api/v3`) or a recorded test server."""
    token_env: str = "GITHUB_TOKEN"
    """Environment variable holding the API token (mount it from a Kubernetes Secret); never logged."""
    min_stars: int = nonnegative(100)
    """Search only repositories with at least this many stars."""
    max_repos: int = nonnegative(100)
    """Crawl at most this many repositories per language (the search API returns at most 1000 per query)."""
    licenses: list[str] = field(default_factory=lambda: [
        "MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "0BSD", "Unlicense", "CC0-1.0", "Zlib",
        "MPL-2.0", "BSL-1.0", "PSF-2.0", "Python-2.0"])
    """SPDX ids (from the API's license detection) whose repositories may be crawled; others are skipped."""
    max_retries: int = nonnegative(5)
    """Attempts per request on 5xx, connection errors and timeouts, with exponential backoff."""
    max_rate_limit_wait_s: float = nonnegative(3600.0)
    """Longest sleep for a rate-limit reset before the crawl fails with a clear error."""
    timeout_s: float = 60.0
    """Per-request connect/read timeout."""


@dataclass
class HubConfig:
    """The `hf:` crawl source: a Hugging Face dataset (The Stack style) read with `datasets` streaming."""

    split: str = "train"
    """Dataset split to stream."""
    data_dir: str = ""
    """Dataset sub-folder (The Stack: `data/python`); empty for the whole dataset."""
    content_field: str = "content"
    """Column holding the file text."""
    path_field: str = "path"
    """Column holding the file path (its extension decides the language); `max_stars_repo_path` in The Stack."""
    repo_field: str = ""
    """Column naming the source repository, when the dataset has one (`max_stars_repo_name` in The Stack)."""
    license_field: str = ""
    """Column with the license (SPDX id or list of them); rows outside `github.licenses` are skipped. Empty: no check."""
    max_rows: int = nonnegative(0)
    """Read at most this many rows of the dataset; 0 reads all."""


@dataclass
class DedupConfig:
    """Exact dedup on normalized content, then MinHash LSH near-dedup (datasketch)."""

    near: bool = True
    """Drop near-duplicates; exact duplicates are always dropped."""
    ngram: int = nonnegative(5)
    """Shingle size in words of the normalized text (lower case, punctuation and whitespace collapsed)."""
    bands: int = nonnegative(16)
    """LSH bands; num_perm = bands * rows. Two files become candidates when one whole band of values matches."""
    rows: int = nonnegative(8)
    """Hash values per band. With 16x8 a pair becomes a candidate with probability 1 - (1 - J^8)^16:
    6 % at Jaccard 0.5, 61 % at 0.7, 95 % at 0.8, 99.9 % at 0.9 (StarCoder: 5-grams, Jaccard 0.7)."""
    threshold: float = 0.5
    """A candidate is a duplicate when its estimated Jaccard similarity with a kept file is at least this. It only
    rejects accidental band collisions (files sharing boilerplate); 0 takes every collision, as datatrove does."""
    seed: int = 1
    """Seed of the MinHash permutations; every rank and every rerun must use the same."""


@dataclass
class DecontamConfig:
    """Drop files that share a long word n-gram with an evaluation set."""

    enabled: bool = True
    """Run decontamination."""
    ngram: int = nonnegative(13)
    """N-gram length in normalized words (13 as in the GPT-3 and Llama decontamination studies)."""
    sets: list[str] = field(default_factory=list)
    """JSON/JSONL files or folders of them whose text fields are the evaluation data; empty: the reasoning data
    that `reasoning` and `evaluate` use (packaged GSM8K sample), plus the files of `CODEPMP_EVAL_DATA` if set."""
    reasoning_sets: list[str] = field(default_factory=list)
    """The dev and evaluation files of the run's own reasoning stage (`reasoning.data_dir` per domain, imported
    pools), indexed besides `sets`; the crawl stage adds them from the pipeline's `reasoning` section."""


@dataclass
class ClassifyConfig:
    """Optional engineering / non-engineering labelling of each kept file with a small LM (the paper's pre-step)."""

    enabled: bool = False
    """Add the `category` and `engineering_prob` columns."""
    model: str = "smollm2-135m-instruct"
    """Classifier LM: packaged alias, HF folder, hub id or s3:// folder."""
    max_chars: int = nonnegative(1500)
    """Characters of each file shown to the classifier."""
    batch_size: int = nonnegative(8)
    """Files per forward pass."""
    threshold: float = 0.4
    """`category` is "engineering" when P(yes) / (P(yes) + P(no)) is at least this. SmolLM2-135M leans to "no":
    on 12 hand-labelled files its engineering scores were 0.44-0.61 and the others 0.19-0.43 (stdlib median 0.44);
    calibrate it for another model, or subsample by `engineering_prob` instead."""


@dataclass
class CrawlConfig:
    sources: list[str] = field(default_factory=list)
    """Where to read code: local directories or tarballs (.tar, .tar.gz, .tgz), `github` (repository search,
    see `github`), or `hf:DATASET` (hub id or local dataset folder, see `hub`); empty: this Python's stdlib."""
    languages: list[str] = field(default_factory=lambda: ["python"])
    """Languages to keep, by file extension (see `codepmp.crawl.filters.EXTENSIONS`)."""
    min_bytes: int = nonnegative(200)
    """Drop files smaller than this: too little code to describe."""
    max_bytes: int = nonnegative(100_000)
    """Drop files larger than this (StarCoder used 1 MB; prompts here are truncated anyway)."""
    max_line_length: int = nonnegative(1000)
    """Drop files with any line longer than this (StarCoder: 1000; minified or data files)."""
    max_mean_line_length: float = nonnegative(100.0)
    """Drop files whose mean line length is above this (StarCoder: 100)."""
    min_alnum_fraction: float = nonnegative(0.25)
    """Drop files whose alphanumeric character fraction is below this (StarCoder: 0.25; data blobs, ASCII art)."""
    notebooks: bool = True
    """Convert Jupyter notebooks (.ipynb) to code (their code cells) when their kernel language is kept."""
    max_archive_bytes: int = nonnegative(4_000_000_000)
    """Refuse a tarball whose members add up to more than this many bytes (decompression bombs)."""
    max_archive_members: int = nonnegative(2_000_000)
    """Refuse a tarball with more members than this (headers alone are a cheap bomb)."""
    max_files: int = nonnegative(0)
    """Keep at most this many files after filtering and dedup, chosen by content hash; 0 keeps all."""
    world_size: int = nonnegative(1)
    """Ranks the pipeline fans the crawl out to (KFP ParallelFor); each reads the units whose key hashes to it."""
    shard_bytes: int = nonnegative(32_000_000)
    """Input bytes per chunk; each chunk writes one Parquet shard (so shards are bounded by this) and a
    completion marker, and is what a retried task redoes at most. Peak memory grows by ~4x this."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Exact and near-duplicate removal."""
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    """Evaluation-set decontamination."""
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    """Optional LM labelling of engineering code."""
    github: GitHubConfig = field(default_factory=GitHubConfig)
    """Settings of the `github` source."""
    hub: HubConfig = field(default_factory=HubConfig)
    """Settings of the `hf:` source."""


@dataclass
class SynthesizeConfig:
    summarizer_model: str = "smollm2-135m-instruct"
    """Model that writes the description of each code file (paper: deepseek-coder-1.3b-instruct)."""
    strong_model: str = "gemma3-270m"
    """Model that writes the chosen implementation (paper: deepseek-coder-6.7b-instruct)."""
    weak_model: str = "smollm2-135m-instruct"
    """Model that writes the rejected implementation (paper: deepseek-coder-1.3b-instruct)."""
    max_pairs: int = nonnegative(32)
    """Number of crawled files to synthesize pairs from; 0 uses every file."""
    categories: list[str] = field(default_factory=list)
    """Use only crawled files of these categories ("engineering", "other"; set by `crawl.classify`); empty: all."""
    temperature: float = 0.7
    """Sampling temperature for all three generations (paper: 0.7); 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling cutoff; 1.0 turns it off (the paper sets only the temperature). Below 1.0 every
    step sorts the whole vocabulary: 28 % slower generation for Gemma-3's 262k-token vocabulary."""
    max_code_chars: int = nonnegative(1500)
    """Code longer than this is cut before it goes into the summarizer prompt."""
    description_tokens: int = nonnegative(64)
    """Max new tokens for a description (paper: 1024)."""
    code_tokens: int = nonnegative(96)
    """Max new tokens for each implementation (paper: 1024)."""
    batch_size: int = nonnegative(16)
    """Rows the transformers backend decodes together (continuous batching: a row that ends is replaced by the
    next prompt; models with sliding-window layers decode static left-padded batches of this size)."""
    seed: int = 0
    """Sampling seed, so a rerun writes the same pairs (for the same batch size and engine)."""
    stop: list[str] = field(default_factory=list)
    """Extra strings that end a generation (the models' end-of-turn tokens always do)."""
    drop_unfinished: bool = False
    """Drop a pair when its description or either implementation hit the token cap without finishing (paper
    profile: true). Off by default because the CPU profiles' caps cut most outputs; kept ones are counted."""
    quality_signals: bool = True
    """Store chosen/rejected length and whether each parses in its language as columns of the pairs."""
    world_size: int = nonnegative(1)
    """Shards the synthesis fans out to (one KFP ParallelFor task each); chunk i goes to shard i % world_size."""
    chunk_rows: int = nonnegative(64)
    """Files per chunk: the unit of caching and resume (a killed task redoes at most one chunk per role)."""
    backend: str = "transformers"
    """"transformers" (in-process), "vllm" (in-process, GPU image) or "openai": an OpenAI-compatible server at
    `endpoint` serving the three models under their names (vLLM, TGI, KServe, or `codepmp serve`)."""
    tensor_parallel_size: int = nonnegative(1)
    """GPUs each model is split over (backend "vllm"); set it to the GPUs of the synthesis pod."""
    endpoint: str = ""
    """Base URL of the OpenAI-compatible server, e.g. http://vllm.models:8000/v1 (backend "openai")."""
    concurrency: int = nonnegative(8)
    """Requests in flight at once to the server (backend "openai")."""
    retries: int = nonnegative(5)
    """Attempts per request before the stage fails (backend "openai"); waits double from 1 s, or Retry-After."""


@dataclass
class TrainConfig:
    max_length: int = nonnegative(384)
    """Tokens per prompt+response sequence; a longer one loses the start of its prompt, never its response's end."""
    batch_size: int = nonnegative(4)
    """Pairs per micro-batch."""
    grad_accum: int = nonnegative(1)
    """Micro-batches per optimizer step."""
    epochs: int = nonnegative(1)
    """Passes over the pairs (paper: 1)."""
    lr: float = 2e-5
    """Peak learning rate (paper: 1e-6 at 1024 pairs per step)."""
    weight_decay: float = 0.1
    """AdamW weight decay (paper: 0.1)."""
    schedule: str = "wsd"
    """Learning-rate schedule: "wsd" (warmup-stable-decay, the paper's) or "cosine" (warmup, then cosine to 0)."""
    warmup_frac: float = 0.03
    """Fraction of steps of linear warmup (paper: 3 %)."""
    decay_frac: float = 0.1
    """Fraction of final steps that decay linearly to zero (paper: the last 10 %; "wsd" only)."""
    rm_coef: float = 1.0
    """Weight of the pairwise loss -log sigmoid(r_chosen - r_rejected)."""
    lm_coef: float = 1.0
    """Weight of the LM cross-entropy on chosen response tokens (0 = pure Bradley-Terry)."""
    grad_checkpointing: bool = False
    """Recompute activations in backward: less memory, about 30 % slower."""
    packing: bool = False
    """Lay each micro-batch out as one row of back-to-back sequences with restarting position ids (a
    block-diagonal causal mask) instead of right-padded rows: no compute on padding. Worth it with
    `attn_implementation` "flash_attention_2" (variable-length kernels); with "sdpa" the masked attention
    over the whole row costs more than the padding it saves, so padded length-grouped batches stay the default."""
    shared_prefix: bool = True
    """Run each pair as one tree (`train.data.collate_pair_trees`): the prompt, and the response tokens both sides
    start with, run once for the two sides instead of twice, with the same rewards, loss and gradients up to
    float rounding. Needs a kernel that takes a custom mask ("sdpa", the default, or "eager"); with another
    kernel, or a sliding window shorter than `max_length`, the trainer pads rows instead and says so. Not
    with `packing`."""
    compile: bool = False
    """torch.compile each decoder layer: 1.4x faster steps for a 1.5B model on an H100 (benchmarks/mfu.py),
    3x for a 0.5B one on an H200 (benchmarks/gpu_train_check.py); the first steps, and new sequence-length
    shapes early on, pay the compile. Slow to compile and no faster on CPU."""
    attn_implementation: str = ""
    """transformers attention kernel: "" (its default, sdpa), "eager", "sdpa", "flash_attention_2" (needs the
    flash-attn package) or "flex_attention"."""
    bf16: bool = False
    """Train in bfloat16 autocast (GPU); CPU runs stay fp32."""
    deepspeed_stage: int = -1
    """-1 trains with plain torch; 0-3 wraps the model in a DeepSpeed engine with that ZeRO stage (configs in
    src/codepmp/train/deepspeed/). Several processes (torchrun / deepspeed launcher) need a stage >= 0."""
    processes: int = nonnegative(0)
    """Training processes in the pod (torchrun --nproc_per_node), each on its own GPU; 0 = one per visible GPU
    (one on a machine without GPUs). More than one needs a DeepSpeed stage. On CPU, 2+ runs gloo processes."""
    deepspeed_config: str = ""
    """Path of a DeepSpeed JSON config to start from instead of the packaged zero2/zero3.json."""
    cpu_offload: bool = False
    """Keep optimizer states (ZeRO-3: also parameters) in CPU memory: larger models per GPU, slower steps."""
    scaling_ratio: float = 0.0
    """Above 1: save a scaling-curve checkpoint at geometrically spaced steps of the stable phase (each about this
    ratio times the previous; the paper used about 1.19), kept in the object store under the run name. 0: none."""
    decay_from_step: int = 0
    """Above 0: do not train from the start; take the scaling-curve checkpoint saved at this step by the run with
    this run name and only decay it (lr linearly to 0 over step * decay_frac / (1 - decay_frac) further steps)."""
    log_every: int = nonnegative(2)
    """Optimizer steps between metric logs to MLflow."""
    checkpoint_every: int = nonnegative(0)
    """Optimizer steps between resumable checkpoints in the object store (model, optimizer, scheduler,
    step, config); 0 = none. A restarted stage resumes from the newest complete one."""
    seed: int = 0
    """Seed for shuffling and head initialisation."""


@dataclass
class ReasoningConfig:
    data_dir: str = ""
    """Folder in the layout of shared/data: gsm8k/{train,dev}.jsonl, math/{train,dev}.jsonl,
    logiqa2/{dev,dev200}.jsonl, reclor/{train,val}.json. Empty: the GSM8K sample shipped in the package."""
    domains: list[str] = field(default_factory=lambda: ["gsm8k"])
    """Domains to finetune and evaluate on: gsm8k and math (pairwise accuracy and best-of-N), logiqa2 and
    reclor (pairwise accuracy and option accuracy: the RM scores every option, the argmax must be the gold).
    LogiQA 2.0 has no public train split: its training items come from dev.jsonl minus the dev200 items."""
    train_problems: int = nonnegative(48)
    """Problems (logic: items) per domain turned into finetuning pairs."""
    dev_problems: int = nonnegative(20)
    """Held-out problems per domain for pairwise accuracy, best-of-N and option accuracy."""
    pairs: str = "corrupted"
    """How math finetuning pairs are made: "corrupted" (the reference solution against copies with a wrong
    final answer), "sampled" (solutions sampled from `policy_model`, labelled by their final answer, correct
    paired with incorrect: Math-Shepherd style) or "shipped" (the same, from the policy samples shipped in the
    package: no sampling at run time; needs `pool` "shipped"). Logic pairs are always the right option against
    each wrong one."""
    rejected_per_problem: int = nonnegative(1)
    """Corrupted pairs per problem ("corrupted"), or at most this many pairs per problem ("sampled")."""
    samples_per_problem: int = nonnegative(4)
    """Solutions sampled per train (and, without a sampled pool, dev) problem for "sampled" pairs (k, at least
    2): a problem gives pairs only when its samples are both right and wrong, so more samples pair more problems.
    For "shipped" pairs: how many of each train problem's shipped samples to pair (4 ship)."""
    dev_pairs_per_problem: int = nonnegative(1)
    """Held-out pairs per dev problem (at most, for "sampled"); few per problem keep the pairs independent."""
    extra_pairs: list[str] = field(default_factory=list)
    """More finetuning pairs from files: a Math-Shepherd JSONL (name containing "shepherd") or a generic
    {prompt, chosen, rejected} JSONL."""
    pool: str = "corrupted"
    """Best-of-N candidates for gsm8k/math dev problems: "corrupted" (the reference plus corruptions),
    "sampled" (from `policy_model`, each labelled by the answer checker; with `pairs` "sampled" the dev pairs
    are then correct against incorrect candidates of the same problem), "import" (`pool_files`) or "shipped"
    (policy samples shipped in the package, with `pairs` "shipped" too; see `samples_dir`)."""
    pool_files: dict[str, str] = field(default_factory=dict)
    """Pool "import": per math domain, a JSONL of {problem_id, prompt, gold, candidates: [{text, is_correct}]}
    (e.g. {"gsm8k": "gsm8k_pool.jsonl", "math": "math_pool.jsonl"}); every configured math domain needs one."""
    pool_file: str = ""
    """Pool "import" with a single math domain: its pool file (the same as `pool_files` {domain: pool_file})."""
    samples_dir: str = ""
    """Pairs and pool "shipped": the folder of policy samples to read (`python -m codepmp.reasoning.policy_samples
    --out DIR` writes one); empty: the samples shipped in the package (reasoning/data/policy/)."""
    candidates_per_problem: int = nonnegative(8)
    """Best-of-N pool size per dev problem (the paper samples up to 256 on a cluster)."""
    policy_model: str = "smollm2-135m-instruct"
    """Model that samples solutions for "sampled" pairs and pools, through `synthesize.backend`."""
    temperature: float = 0.7
    """Sampling temperature of the policy."""
    max_new_tokens: int = nonnegative(256)
    """Tokens per sampled solution."""
    seed: int = 0
    """Seed for sampling problems, corruptions and pairings."""


@dataclass
class EvaluateConfig:
    best_of_n: list[int] = nonnegative(default_factory=lambda: [1, 2, 4, 8])
    """N values for best-of-N; each is averaged over `bon_trials` random draws from the pool."""
    bon_trials: int = nonnegative(16)
    """Random subsets drawn per problem and N."""
    batch_size: int = nonnegative(1)
    """Sequences per forward pass: trie packs (right-padded to the longest), or texts where nothing is shared
    (models with a sliding window or a flash kernel). On a CPU 1 is fastest: a pack already keeps it busy, and
    padding packs to a common length costs more than it saves (benchmarks/README.md); a GPU wants more."""
    max_length: int = nonnegative(384)
    """Tokens per scored sequence; a longer one loses the start of its prompt, as in training."""
    pack_tokens: int = nonnegative(1024)
    """Token-trie nodes per tree-attention forward pass (at least `max_length`). Larger passes read the weights
    fewer times; the attention mask is pack_tokens x pack_tokens, so keep it to a few thousand."""
    bootstrap_resamples: int = nonnegative(1000)
    """Bootstrap resamples behind every 95 % confidence interval."""
    seed: int = 0
    """Seed of the best-of-N candidate draws (one generator per seed, N and problem, identical for every model),
    the majority vote's tie breaks and every bootstrap. The paper uses 123 (`--set evaluate.seed=123`)."""
    gate_metric: str = "pairwise_accuracy"
    """Metric that decides promotion (higher is better): "pairwise_accuracy" over all dev pairs, or a domain's
    metric such as "gsm8k.pairwise_accuracy", "gsm8k.bon8_rm" or "logiqa2.option_accuracy". A candidate
    takes the champion alias only with a lead above its own CI half-width on it (where it has an interval)."""


@dataclass
class SweepConfig:
    sizes: list[int] = nonnegative(default_factory=lambda: [8, 24])
    """Sample-efficiency sweep: finetuning subset sizes (pairs). Each size finetunes once from the PMP model
    and once from the base model, as parallel pipeline tasks; [] runs no sweep. Subsets are nested (each
    smaller one is the start of the larger ones), so the curves differ only in how much data they saw."""
    seed: int = 0
    """Seed of the shuffle that the nested subsets are cut from (a task of seed s shuffles with this + s)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Finetuning seeds: every size finetunes PMP and control once per seed, each (size, seed) its own pair of
    parallel tasks. A seed replaces `finetune.seed` for its tasks (score-head init, batch order) and draws its own
    nested subsets, the same for PMP and control, so the report's spread over seeds covers both the training's
    randomness and which pairs were drawn. [0] is one run per size; the paper profile runs 3 (its seed is 123)."""

    def __post_init__(self) -> None:
        for key, values in (("sizes", self.sizes), ("seeds", self.seeds)):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:  # two tasks of one (size, seed) would share checkpoints and results
                raise ConfigError(f"config key 'sweep.{key}' repeats {repeated}: list each value once")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ConfigError(f"config key 'sweep.seeds' needs at least one seed, each >= 0, got {self.seeds!r}")


@dataclass
class PromoteConfig:
    registered_model: str = "codepmp-reward-model"
    """Name of the registered model in the MLflow registry."""
    alias: str = "champion"
    """Alias moved to a new version that beats both its control and the current holder (re-scored on the run's
    dev data) on `evaluate.gate_metric` with paired intervals above 0; other versions get `challenger`."""


@dataclass
class PipelineConfig:
    profile: str = "local"
    """Name of the profile these values came from."""
    base_model: str = "smollm2-135m-instruct"
    """Base LM for the preference model: a packaged alias, HF folder, hub id or s3:// folder."""
    experiment: str = "codepmp"
    """MLflow experiment that every stage logs to."""
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    synthesize: SynthesizeConfig = field(default_factory=SynthesizeConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(lm_coef=0.0, grad_accum=1))
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _tiny() -> dict[str, Any]:
    return {
        "crawl": {"max_files": 8},
        "synthesize": {"strong_model": "smollm2-135m-instruct", "max_pairs": 4, "description_tokens": 24,
                       "code_tokens": 24, "max_code_chars": 600, "batch_size": 4},
        "pretrain": {"max_length": 128, "batch_size": 2, "grad_accum": 1, "log_every": 1},
        "finetune": {"max_length": 128, "batch_size": 2, "grad_accum": 1, "log_every": 1},
        "reasoning": {"train_problems": 4, "dev_problems": 4, "candidates_per_problem": 4},
        "evaluate": {"best_of_n": [1, 2, 4], "bon_trials": 4, "max_length": 128},
        "sweep": {"sizes": [2]},
    }


def _paper() -> dict[str, Any]:
    # Padded rows, not pair trees: the GPU figures of this setup were measured with them; pair trees on a GPU
    # (a masked attention kernel instead of the causal one) are not measured.
    paper_train = {"max_length": 1024, "batch_size": 8, "grad_accum": 16, "lr": 1e-6, "bf16": True,
                   "grad_checkpointing": True, "compile": True, "deepspeed_stage": 2, "log_every": 10,
                   "checkpoint_every": 500, "shared_prefix": False}
    return {
        "base_model": "Qwen/Qwen2-1.5B",
        "crawl": {"max_files": 0, "max_bytes": 1_000_000},
        "synthesize": {"summarizer_model": "deepseek-ai/deepseek-coder-1.3b-instruct",
                       "strong_model": "deepseek-ai/deepseek-coder-6.7b-instruct",
                       "weak_model": "deepseek-ai/deepseek-coder-1.3b-instruct",
                       "max_pairs": 0, "max_code_chars": 8000, "description_tokens": 1024,
                       "code_tokens": 1024, "temperature": 0.7, "drop_unfinished": True, "backend": "vllm",
                       # deepseek-coder-instruct's end of turn, for servers that do not read its generation config
                       "stop": ["<|EOT|>"], "world_size": 64,
                       "chunk_rows": 2048},
        "pretrain": paper_train,
        "finetune": {**paper_train, "lm_coef": 0.0, "lr": 1e-6, "grad_accum": 8, "checkpoint_every": 200},
        "reasoning": {"domains": ["gsm8k", "math", "logiqa2"], "train_problems": 7273, "dev_problems": 200,
                      "pairs": "sampled", "pool": "sampled", "samples_per_problem": 8,
                      "candidates_per_problem": 256,
                      "policy_model": "Qwen/Qwen2-1.5B-Instruct", "max_new_tokens": 1024},
        "evaluate": {"best_of_n": [1, 2, 4, 8, 16, 32, 64, 128, 256], "max_length": 1024, "batch_size": 16,
                     "pack_tokens": 2048},
        "sweep": {"sizes": [250, 500, 1000, 2000, 4000], "seeds": [123, 124, 125]},
    }


QWEN_SMALL, QWEN_LARGE = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"


def _qwen() -> dict[str, Any]:
    """The paper's design within one model family, small enough for one machine: a Qwen2 reward model
    (Qwen2.5-Coder-0.5B, `Qwen2ForSequenceClassification`), the strong writer 1.5B against the weak 0.5B, and
    the 1.5B as policy (`--set reasoning.pairs=sampled` samples train pairs from it). The best-of-N pool and dev
    pairs are the shipped Qwen2.5-Coder samples (`reasoning.pool` "shipped"). Provision the models first:
    `python -m codepmp.models qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct`."""
    train = {"max_length": 512, "batch_size": 2, "grad_accum": 2, "lr": 1e-5, "log_every": 1}
    return {
        "base_model": QWEN_SMALL,
        "crawl": {"max_files": 16},
        "synthesize": {"summarizer_model": QWEN_SMALL, "strong_model": QWEN_LARGE, "weak_model": QWEN_SMALL,
                       "max_pairs": 16, "description_tokens": 96, "code_tokens": 192, "batch_size": 8},
        "pretrain": train,
        "finetune": {**train, "lm_coef": 0.0},
        "reasoning": {"pool": "shipped", "dev_pairs_per_problem": 4, "train_problems": 32, "dev_problems": 20,
                      "policy_model": QWEN_LARGE, "max_new_tokens": 320},
        "evaluate": {"max_length": 768},
        "sweep": {"sizes": [16]},
    }


def _local() -> dict[str, Any]:
    """`make run`: the dataclass defaults, but GSM8K's best-of-N pool and dev pairs are the policy samples shipped
    in the package (real Qwen2.5-Coder solutions labelled by the answer checker; reasoning/data/policy/
    provenance.json), up to 4 pairs per problem as few problems have both right and wrong samples; their solutions
    run to ~320 tokens, hence the longer scored sequences. `--set reasoning.pairs=shipped` also finetunes on the
    shipped train samples."""
    return {"evaluate": {"max_length": 512}, "reasoning": {"pool": "shipped", "dev_pairs_per_problem": 4}}


PROFILES = {"tiny": _tiny, "local": _local, "qwen": _qwen, "paper": _paper}


def _merge(obj: Any, overrides: dict[str, Any], where: str) -> Any:
    """Return a copy of dataclass `obj` with `overrides` applied; unknown keys raise ConfigError."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown config key '{path}' (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
            changes[key] = _merge(current, value, path)
        else:
            changes[key] = _coerce(value, current, path)
    return dataclasses.replace(obj, **changes)


def _coerce(value: Any, current: Any, path: str) -> Any:
    # JSON round trips (KFP parameters) turn ints into floats and lists stay lists: accept those.
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
    elif isinstance(current, list):
        if isinstance(value, list):
            return [_coerce(v, current[0], path) for v in value] if current else list(value)
    elif isinstance(current, dict):  # string to string maps (reasoning.pool_files)
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
    raise ConfigError(f"config key '{path}' expects {type(current).__name__}, got {value!r}")


def _check_nonnegative(obj: Any, where: str) -> None:
    """Refuse a negative value of a `nonnegative` field at load time, naming the key, rather than deep inside a
    stage."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            _check_nonnegative(value, path)
        elif f.metadata.get("nonnegative"):
            values = value if isinstance(value, list) else [value]
            bad = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0]
            if bad:
                raise ConfigError(f"config key '{path}' must not be negative, got {value!r}")


def load_config(profile: str = "local", overrides: dict[str, Any] | None = None) -> PipelineConfig:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}' (known: {', '.join(PROFILES)})")
    cfg = _merge(PipelineConfig(profile=profile), PROFILES[profile](), "")
    cfg = _merge(cfg, overrides or {}, "")
    _check_nonnegative(cfg, "")
    return cfg


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """Turn CLI `--set pretrain.lr=1e-5` strings into a nested overrides dict (values parsed as JSON)."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set '{item}' must look like section.key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
