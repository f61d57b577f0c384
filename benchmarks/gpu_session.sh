#!/usr/bin/env bash
# One prepared GPU session (issue 11): the GPU check study end to end, the tuned-step comparison against a bare tuned
# loop, a training job's fixed cost, the GPU claim + NVML handle on a real GPU and the cost of writing last.pt. Each
# step has its own time limit, so the whole session stays under about 10 minutes; everything it prints lands in OUT_DIR
# (9 files).
#
#   bash benchmarks/gpu_session.sh OUT_DIR          (on a GPU machine with leanmed's dependencies importable;
#                                                     on the project's lent H200/H100: bash .gpu-bundle/on_device.sh ...)
set -u
OUT=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/session.txt"; }

{ nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python --version
  python -c "import torch, timm, bitsandbytes, snakemake; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'timm', timm.__version__, 'bitsandbytes', bitsandbytes.__version__, 'snakemake', snakemake.__version__)"
  git rev-parse --short HEAD 2>/dev/null; } > "$OUT/env.txt" 2>&1

# 1. The GPU check study: what `make gpu-check` runs (the Makefile's .venv is not on the GPU machine).
log "gpu-check: start"
python -m leanmed.report.gpu_check --require-gpu >> "$OUT/session.txt" 2>&1 || { log "no GPU"; exit 2; }
started=$(date +%s)
timeout 300 python -m snakemake --profile profiles/gpu-check > "$OUT/gpu_check_snakemake.log" 2>&1
log "gpu-check: snakemake exit $? after $(( $(date +%s) - started )) s"
timeout 40 python -m snakemake --profile profiles/gpu-check --report results/gpu-check/report.html \
  >> "$OUT/gpu_check_snakemake.log" 2>&1
log "gpu-check: with the report $(( $(date +%s) - started )) s in all"
# Ratios per setting, then every training job's wall seconds and its fixed part (outside training).
python -m leanmed.report.gpu_check results/gpu-check > "$OUT/gpu_check_ratios.txt" 2>&1
cp results/gpu-check/summary.csv "$OUT/gpu_check_summary.csv" 2>/dev/null

# 2. The training step against a bare tuned loop (densenet121, ViT-B/32+; 256 px, batch 32).
log "train_step: start"
timeout 120 python benchmarks/train_step.py --gpu --gpu-steps 15 --gpu-repeats 3 > "$OUT/train_step.txt" 2>&1
log "train_step: exit $?"

# 3. A training job's fixed cost on this machine (process start to metrics.json, outside training).
log "job_overhead: start"
timeout 60 python benchmarks/job_overhead.py --device cuda --image-size 128 --rounds 2 > "$OUT/job_overhead.txt" 2>&1
log "job_overhead: exit $?"

# 4. The GPU claim and the NVML handle energy is read from, on a real GPU.
log "claim: start"
timeout 25 python - > "$OUT/claim.txt" 2>&1 <<'PY'
import os, subprocess
from leanmed.train.devices import claim_gpu
claim = claim_gpu("auto")
print("claim:", claim)
print("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"), "CUDA_DEVICE_ORDER", os.environ.get("CUDA_DEVICE_ORDER"))
import torch, pynvml
from leanmed.train.carbontracker_setup import nvml_handles_for_job
pynvml.nvmlInit()
uuid = str(torch.cuda.get_device_properties(0).uuid)
handles, how = nvml_handles_for_job(pynvml, 0, os.environ.get("CUDA_VISIBLE_DEVICES"), uuid)
nvml_uuid = pynvml.nvmlDeviceGetUUID(handles[0])
print("torch uuid", uuid, "| NVML handle:", how, "| NVML uuid", nvml_uuid)
print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout)
print("same GPU:", str(nvml_uuid).endswith(uuid))
PY
log "claim: exit $?"

# 5. What writing last.pt costs on this machine's disk (ViT-B/32+: 1.4 GB with Adam state), for the checkpoint interval.
log "checkpoint_cost: start"
timeout 45 python benchmarks/checkpoint_cost.py --models vit_base_patch32_plus_256 --settings fp32 8bit --repeats 2 \
  --dir results/benchmarks > "$OUT/checkpoint_cost.txt" 2>&1
log "checkpoint_cost: exit $?"
log "done"
