#!/usr/bin/env bash
# Input-geometry comparison (docs/models.md): same model, data, schedule and budget; only the
# geometry differs. Then evaluate each best.pt on the validation split with --json.
set -euo pipefail
D=${DATA:-../shared/data/kvasir-seg}
for g in crop whole; do
  OMP_NUM_THREADS=1 polypseg train unet --images "$D/images" --masks "$D/masks" --boxes "$D/bboxes.json" \
    --val-list training/splits/kvasir-seg-val.txt --out "runs/geometry-$g" --geometry "$g" --encoder resnet18 \
    --size 224 --epochs 3 --limit 400 --batch-size 8 --lr 2e-3 --workers 0 --negative-fraction 0
  polypseg evaluate --images "$D/images" --masks "$D/masks" --boxes "$D/bboxes.json" \
    --names training/splits/kvasir-seg-val.txt --checkpoint "runs/geometry-$g/best.pt" --json "runs/geometry-$g/val.json"
done
