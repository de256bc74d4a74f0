#!/bin/bash
# Sample-efficiency sweep of thinking-core variants (accuracy vs optimizer steps); device-independent signal.
P="python experiments/arith_probe.py --device cuda --form word --cur 0.3 --lr 3e-3 --steps 4000 --evals 500,1000,2000,3000"
mkdir -p $OUT
$P --core ssm --npre 2 --K 4 --bptt 2 > $OUT/v1.txt 2>&1 &
$P --core ssm --npre 2 --K 4 --kmin 4 --bptt 4 > $OUT/v2.txt 2>&1 &
$P --core puregru --K 0 > $OUT/v3.txt 2>&1 &
$P --core gru --npre 1 --K 1 > $OUT/v4.txt 2>&1 &
$P --core ssm --npre 1 --d 96 --K 4 --bptt 2 --B 32 > $OUT/v5.txt 2>&1 &
$P --core gru --npre 1 --K 2 --bptt 2 --B 32 > $OUT/v6.txt 2>&1 &
python experiments/arith_probe.py --device cuda --form compact --cur 0.3 --lr 3e-3 --steps 4000 --evals 500,1000,2000,3000 --core ssm --npre 2 --K 4 --bptt 2 > $OUT/v7.txt 2>&1 &
wait
tail -n 12 $OUT/*.txt
