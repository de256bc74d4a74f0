#!/bin/bash
mkdir -p $OUT
S="python experiments/demo_sweep.py --device cuda"
$S --mult 1 --out $OUT/m1 > $OUT/m1.txt 2>&1 &
$S --mult 2 --out $OUT/m2 > $OUT/m2.txt 2>&1 &
$S --mult 4 --out $OUT/m4 > $OUT/m4.txt 2>&1 &
$S --mult 2 --batch 32 --out $OUT/m2b32 > $OUT/m2b32.txt 2>&1 &
$S --mult 1 --cost 0.0 --out $OUT/m1c0 > $OUT/m1c0.txt 2>&1 &
wait
for f in $OUT/*.txt; do echo $f; tail -n 1 $f; done
for d in m1 m2 m4; do tail -n 1 $OUT/$d/metrics.jsonl; done
