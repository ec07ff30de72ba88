"""Label quality without ground truth: `c2f report`, `c2f compare`, `c2f filter`.

A tool that reads shards, standing on the format: it imports `shards` and nothing else of the
project, and nothing below it imports it (tests/test_imports.py).

    output.py   an output directory: manifest, shards, semantic classes (which of them are "things")
    measures.py per-image measures and per-shard sums, one pass over a shard's bytes (worker side)
    report.py   c2f report: the pass in a process pool -> report.json, samples.parquet, report.html
    compare.py  c2f compare: two outputs of one plan, sample by sample -> agreement, matching
    query.py    the --where condition: an SQL expression, run by DuckDB with no file access
    filter.py   c2f filter: a per-sample table + a condition -> a subset file (shards/subset.py), which
                shards.reader and `c2f pretrain --subset` read
    render.py   plots (matplotlib), overlay strips (shards.inspect's drawing) and the HTML page
    table.py    the report's per-input table (the shards' tables + measures): Parquet, CSV
    config.py   the commands' settings (CLI flags)

numpy, PIL, matplotlib, pyarrow, DuckDB and Jinja2 only: no torch (the validator's rule), so a
report runs anywhere.
"""
