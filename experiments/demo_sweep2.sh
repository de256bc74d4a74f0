#!/bin/bash
# Does a faster memory-value learning rate make the memory bank (not the dense layers) hold the facts?
mkdir -p $OUT
S="python experiments/demo_sweep.py --device cuda --mult 3"
$S --memlr 5 --out $OUT/lr5 > $OUT/lr5.txt 2>&1 &
$S --memlr 20 --out $OUT/lr20 > $OUT/lr20.txt 2>&1 &
$S --memlr 60 --out $OUT/lr60 > $OUT/lr60.txt 2>&1 &
wait
for f in $OUT/*.txt; do echo $f; tail -n 1 $f | cut -c1-420; done
rm -rf $OUT/lr*/checkpoint $OUT/lr*/predictions.jsonl
