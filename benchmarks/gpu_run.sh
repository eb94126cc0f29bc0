#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md, as one prepared script for a lent GPU machine
# (the machine has jax, flax, optax, torch, but not grain or ml_collections: carried as wheels in
# .whl/, see below; no TensorFlow anywhere). Runs the named parts in the order given, each under
# its own time limit and all under one deadline, and writes each part's log and JSON to $OUT.
#
#   DEADLINE_S=470 EPOCHS=3 bash benchmarks/gpu_run.sh epoch upsample_ab torch upsample
#                                     # session 16's first call: 412 s on an H200, start not counted
#   bash benchmarks/gpu_run.sh mfu three_runs profile    # a second call on the same warm machine
#                                     # (the device tool gives a machine back after 30 s idle)
#   DEADLINE_S=400 bash benchmarks/gpu_run.sh roofline profile
#   DEADLINE_S=420 bash benchmarks/gpu_run.sh conv_forms_ab bn_ab
#                                     # what sessions 17 and 18 (no GPU) left for the next one, two
#                                     # calls on one warm machine: which layers run far below their
#                                     # roofline and where the time goes (docs/benchmarks.md), then
#                                     # the CPU's conv forms and the BatchNorm backward on the GPU;
#                                     # the deadline skips the parts that no longer fit
#
# Parts:
#   torch        multi-task iteration vs PyTorch eager on the same GPU, 256 px, batch 16, both
#                phases, float32 and bfloat16 (torch autocast), after the equivalence check
#   epoch        whole epochs on the 1,300 photos (carried in .gpudata/), mtcolor's resident path
#                vs the tutorial's data path (DataLoader, one forked worker per core) + torch on the
#                GPU, 256 px (benchmarks/tutorial_epoch.py, a child process without JAX)
#   torch_fill   the `mfu` row side by side with PyTorch autocast (same batch; the equivalence check
#                is the `torch` part's, at batch 16)
#   epoch_torch  the `epoch` part's PyTorch reference alone
#   mfu          bf16 multi-task iteration at a batch that fills the chip (256), XLA's FLOPs / peak
#   upsample     the decoder's transposed-conv forms alone (benchmarks/decoder_upsample.py)
#   upsample_ab  the whole iteration (bf16, f32) with the phases and the adjoint form, the two
#                candidates for GPUs (train_step.py --upsample_forms)
#   three_runs   the classifier and colorizer iterations (the multi-task one is in `torch`), for
#                the projected wall time of the paper's three runs
#   profile      where the bf16 iteration at batch 256 spends its time (benchmarks/profile_step.py):
#                kernels by category, the FLOP and byte floors, and the MFU (as `mfu` does)
#   roofline     the bf16 iteration's roofline on this chip (benchmarks/roofline.py: the best MFU
#                any kernels could reach) and each convolution and matmul timed alone against its
#                roofline, largest first: which layers hand-written kernels would have to win
#   bn_ab        the bf16 iteration at batch 256 with flax's BatchNorm and with a hand-written
#                backward pass (benchmarks/batch_norm_vjp.py; 0.7-1.6 % on the CPU), A/B
#   conv_forms_ab  the bf16 iteration at batch 256 with cuDNN's convolutions (as shipped) and with
#                the CPU forms mtcolor.models.conv.GPU_FORMS may give GPUs: the PatchGAN's stride-2
#                input gradients as stride-1 convolutions, the 1-2 output-channel convs as matmuls
#
# Wheels, made on a machine with pip access, from the repository root:
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 portpicker importlib_resources
set -u
OUT=${OUT:-/tmp/gpu-out}
DEADLINE_S=${DEADLINE_S:-540}
mkdir -p "$OUT"
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
# JAX would otherwise take 75% of the GPU's memory at start-up and starve torch in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Parts compile some of the same programs (the bf16 iteration at batch 16): compile each once.
export JAX_COMPILATION_CACHE_DIR=/tmp/mtcolor-jax-cache
if [ -d .whl ] && [ ! -d /tmp/site ] && [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
DATA=${DATA:-.gpudata/imagenet-val-1300}
PY=${PY:-python3}
SIZE=${SIZE:-256}          # SIZE=32 MFU_BATCH=16 STEPS=1: a dry run of the script on a CPU
MFU_BATCH=${MFU_BATCH:-256}
STEPS=${STEPS:-10}
EPOCHS=${EPOCHS:-2}        # whole epochs per path in the epoch parts (the first counts start-up)
# bf16 dense peak of an H100 SXM and of an H200 (the same tensor cores), TFLOP/s.
PEAK_BF16=${PEAK_BF16:-989}
# roofline.py's chip (peaks and bandwidth): h200 on an H200, else h100.
CHIP=${CHIP:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | grep -qi h200 \
  && echo h200 || echo h100)}

# The machine's own flax/optax/chex first (built for its jax); the repository's pinned ones
# (.whl/pinned) if mtcolor does not import with them.
if ! $PY -c "import mtcolor.train.steps, mtcolor.train.state" 2> /tmp/import.err; then
  echo "mtcolor does not import with the machine's packages: $(tail -n 1 /tmp/import.err)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/pinned/*.whl || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
$PY -c "import sys, jax, flax, optax, torch; print(sys.version.split()[0], 'jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"

part() {  # part NAME LIMIT_S COMMAND...: run under min(LIMIT_S, time left), log to $OUT/parts.log
  # (one log for all parts: the device tool brings back at most 8 files)
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE_S - ($(date +%s) - START)))
  if [ "$left" -lt 30 ]; then echo "=== $name: skipped, ${left} s left"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit} s, $(($(date +%s) - START)) s in)"
  # SIGABRT first: Python's faulthandler (PYTHONFAULTHANDLER) prints every thread's stack, so a
  # part that hangs says where.
  timeout -s ABRT -k 15 "$limit" "$@" > "/tmp/$name.log" 2>&1
  local status=$?
  { echo "=== $name: exit $status"; cat "/tmp/$name.log"; } >> "$OUT/parts.log"
  echo "=== $name: exit $status after $(($(date +%s) - START)) s"
  grep -v "^WARNING\|^I0000\|^W0000\|^E0000" "/tmp/$name.log" | tail -n 25
}

for name in "$@"; do
  case $name in
    torch) part torch 240 $PY benchmarks/train_step.py --reference torch --sizes "$SIZE" \
      --experiments multitask --phase 1 2 --dtypes float32 bfloat16 --steps "$STEPS" --rounds 3 \
      --out "$OUT/train_step_torch.json" ;;
    torch_fill) part torch_fill 150 $PY benchmarks/train_step.py --reference torch --sizes "$SIZE" \
      --experiments multitask --phase 2 --dtypes bfloat16 --batch_size "$MFU_BATCH" --steps 5 \
      --rounds 2 --skip_check --out "$OUT/train_step_torch_fill.json" ;;
    epoch_torch) part epoch_torch 240 $PY benchmarks/epoch.py --data "$DATA" --sizes "$SIZE" \
      --paths --reference torch --epochs "$EPOCHS" --out "$OUT/epoch_torch.json" ;;
    epoch) part epoch 150 $PY benchmarks/epoch.py --data "$DATA" --sizes "$SIZE" \
      --paths resident --reference torch --epochs "$EPOCHS" --out "$OUT/epoch.json" ;;
    mfu) part mfu 120 $PY benchmarks/train_step.py --sizes "$SIZE" --experiments multitask \
      --phase 2 --dtypes bfloat16 --batch_size "$MFU_BATCH" --steps "$STEPS" --peak_tflops "$PEAK_BF16" \
      --out "$OUT/mfu.json" ;;
    upsample) part upsample 90 bash -c "$PY benchmarks/decoder_upsample.py --size $SIZE \
      --batch 16 --repeats $((STEPS * 2)) --out $OUT/decoder_upsample_f32.json && \
      $PY benchmarks/decoder_upsample.py --size $SIZE --batch 16 --repeats $((STEPS * 2)) \
      --dtype bfloat16 --out $OUT/decoder_upsample_bf16.json" ;;
    upsample_ab) part upsample_ab 150 $PY benchmarks/train_step.py --sizes "$SIZE" \
      --experiments multitask --phase 2 --dtypes bfloat16 float32 --upsample_forms phases adjoint \
      --steps "$STEPS" --out "$OUT/upsample_ab.json" ;;
    three_runs) part three_runs 150 $PY benchmarks/train_step.py --sizes "$SIZE" \
      --experiments classification colorization --phase 1 2 --dtypes bfloat16 --steps "$STEPS" \
      --out "$OUT/three_runs.json" ;;
    profile) part profile 120 $PY benchmarks/profile_step.py --size "$SIZE" --phase 2 \
      --dtype bfloat16 --batch_size "$MFU_BATCH" --steps 3 --top 40 --out "$OUT/profile.json" \
      --peak_tflops "$PEAK_BF16" --trace_copy "$OUT/profile_trace.json.gz" ;;
    roofline) part roofline 240 $PY benchmarks/roofline.py --size "$SIZE" --batch_size \
      "$MFU_BATCH" --chip "$CHIP" --time_alone 5 --time_budget_s 180 --top 40 \
      --out "$OUT/roofline.json" ;;
    bn_ab) part bn_ab 180 $PY benchmarks/form_ab.py --arms mtcolor batch_norm_vjp --size "$SIZE" \
      --batch_size "$MFU_BATCH" --dtype bfloat16 --phase 2 --steps 5 --rounds 4 \
      --out "$OUT/bn_ab.json" ;;
    conv_forms_ab) part conv_forms_ab 240 $PY benchmarks/form_ab.py --arms mtcolor \
      gpu_space_to_depth_input_gradient gpu_few_output_channels --size "$SIZE" \
      --batch_size "$MFU_BATCH" --dtype bfloat16 --phase 2 --steps 5 --rounds 4 \
      --out "$OUT/conv_forms_ab.json" ;;
    *) echo "unknown part: $name" ;;
  esac
done
echo "=== done after $(($(date +%s) - START)) s"
