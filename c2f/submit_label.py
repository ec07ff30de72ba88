"""Entry script for `ray submit c2f/cluster.yaml c2f/submit_label.py -- INPUT OUTPUT [flags]`.

The cluster launcher copies this file to the head node and runs it there; it joins the running
cluster (`--address auto`) and runs the same job as `c2f label`.
"""

import sys

from c2f.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--address" not in argv:
        argv += ["--address", "auto"]
    sys.exit(main(["label", *argv]))
