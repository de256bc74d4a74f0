"""Evaluation: scoring a trained model on a task's test split, with ablations and test-time refinement.

    evaluate.py    greedy answers scored the way lm-evaluation-harness scores them (`evaluate_qa`)
    refine.py      test-time adaptation: more latent iterations, the draft answer re-read (R6)
    generate.py    `rmt generate`: answer a prompt from a checkpoint
    visual_qa.py   a visual task's report (accuracy by question kind, ablations, memory-read picture)
    report.py      `rmt report`: the claims table of a reproduce run
    plots.py       training curves
"""
