#!/usr/bin/env python
"""Runs a Python script (argv[1:]) in this process and prints its peak RSS in MB on stderr's last line."""
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print(f"peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}", file=sys.stderr)
