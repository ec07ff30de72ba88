"""Label quality without ground truth: `c2f report`, `c2f compare`, `c2f filter`.

A tool that reads shards, standing on the format: it imports `shards` and nothing else of the
project, and nothing below it imports it (tests/test_imports.py).

    output.py   an output directory: manifest, shards, semantic classes (which of them are "things")
    measures.py per-image measures and per-shard sums, one pass over a shard's bytes (worker side)
    report.py   c2f report: the pass in a process pool -> report.json, samples.csv, report.html
    compare.py  c2f compare: two outputs of one plan, sample by sample -> agreement, matching
    where.py    the --where condition language over samples.csv's columns -> a row mask
    filter.py   c2f filter: a report + a condition -> a subset file (shards/subset.py), which
                shards.reader and `c2f pretrain --subset` read
    render.py   plots (matplotlib), overlay strips (shards.inspect's drawing) and the HTML page
    table.py    samples.csv: columns of numbers and text, written and read back
    config.py   the commands' settings (CLI flags)

numpy, PIL and matplotlib only: no torch (the validator's rule), so a report runs anywhere.
"""
