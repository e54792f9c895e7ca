#!/usr/bin/env bash
# The GPU checks in one go, each under its own time limit, each full log in LOGS/<name>.log (summary lines here):
#
#   benchmarks/gpu_checks.sh LOGS Q05 Q15      # Q05, Q15: folders with the config.json and tokenizer of
#                                              # Qwen2.5-Coder-0.5B and -1.5B (no weights needed: random ones)
#
# 1. trainer_mfu.py: MFU of the real trainer in the paper profile's setup (Qwen2-1.5B shape, ZeRO-2, compile, ckpt)
# 2. gpu_qwen_check.py: the qwen profile's pretrain, finetune and scoring in bf16 (Qwen2.5-Coder-0.5B shape)
# 3. synthesis_batched_vs_sequential.py: generation at the paper's length and temperature (1.5B shape, bf16)
# PYTHON picks the interpreter (default .venv/bin/python).
set -u
logs=$1 q05=$2 q15=$3
py=${PYTHON:-.venv/bin/python}
mkdir -p "$logs"
"$py" -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'deepspeed', deepspeed.__version__, torch.cuda.get_device_name())"

check() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$py" "$@" > "$logs/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
    grep -E "^(RESULT|MFU|step s|pretrain |finetune |score |ok$|sequential|codepmp|speedup|model |[A-Z].* TFLOP)" \
        "$logs/$name.log" || tail -n 5 "$logs/$name.log"
}

check trainer_mfu 260 benchmarks/trainer_mfu.py --tokenizer "$q05"
check gpu_qwen_check 150 benchmarks/gpu_qwen_check.py --random-weights "$q05"
check synthesis 150 benchmarks/synthesis_batched_vs_sequential.py --random-weights "$q15" --prompts 8 \
    --batch-size 8 --max-new-tokens 256 --temperature 0.7 --repeats 2
