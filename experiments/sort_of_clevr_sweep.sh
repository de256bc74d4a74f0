#!/bin/bash
# Sort-of-CLEVR encoder/read design sweep (accuracy vs optimizer steps; run on one GPU only to make it fast).
# RMT_CACHE_DIR must hold the generated data set (generated once on any machine).
P="python3 experiments/sort_of_clevr_probe.py --device cuda --steps 100000 --eval-every 250 --time-limit ${TL:-400}"
C='--set vision_stem="conv"'
mkdir -p $OUT
$P --tag v01_patch_all > $OUT/v01.txt 2>&1 &
$P $C --tag v02_conv4_all > $OUT/v02.txt 2>&1 &
$P $C --set vision_conv_layers=3 --tag v03_conv3_all > $OUT/v03.txt 2>&1 &
$P $C --questions nonrel --tag v04_conv4_nonrel > $OUT/v04.txt 2>&1 &
$P $C --questions nonrel --cheat --tag v05_conv4_nonrel_cheat > $OUT/v05.txt 2>&1 &
$P $C --set d_model=128 --tag v06_conv4_d128 > $OUT/v06.txt 2>&1 &
$P $C --memory-aux 0.5 --tag v07_conv4_aux > $OUT/v07.txt 2>&1 &
$P $C --set vision_conv_layers=3 --lr 1e-3 --tag v08_conv3_lr1e-3 > $OUT/v08.txt 2>&1 &
$P $C --batch 128 --tag v09_conv4_b128 > $OUT/v09.txt 2>&1 &
$P --questions nonrel --cheat --tag v10_patch_nonrel_cheat > $OUT/v10.txt 2>&1 &
wait
for f in $OUT/v*.txt; do grep -v '"step"' $f | tail -n 3; grep '"step"' $f | awk 'NR%4==0' | tail -n 4; grep '"step"' $f | tail -n 1; done
