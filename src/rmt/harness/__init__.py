"""The harness commands: whole experiments built from the library.

    demo.py        `rmt demo`: train the tiny RMT with its curriculum, evaluate with ablations, report
    bench.py       `rmt bench`: linear scaling, constant-state generation, memory lookups, MFU
    reproduce.py   `rmt reproduce`: the article's claims over several seeds, with baselines
"""
