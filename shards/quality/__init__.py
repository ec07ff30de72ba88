"""Label quality without ground truth: `c2f report`, `c2f compare`, `c2f filter`.

    output.py   an output directory: manifest, shards, label space (which classes are "things")
    measures.py per-image measures and per-shard sums, one pass over a shard's bytes (worker side)
    report.py   c2f report: the pass in a process pool -> report.json, samples.csv, report.html
    compare.py  c2f compare: two outputs of one plan, sample by sample -> agreement, matching
    select.py   c2f filter: a small expression language over samples.csv -> a subset file
                that shards.reader and `c2f pretrain --subset` read
    render.py   plots (matplotlib), overlay strips (shards.inspect's drawing) and the HTML page

numpy, PIL and matplotlib only: no torch (the validator's rule), so a report runs anywhere.
"""
