"""`make bench`: Overnight's speed goals, measured against baselines taken in the same run.

Nothing here is a unit test. Every figure is printed next to a baseline measured on the same machine in
the same run (a bare aiohttp client, or the ideal rate of a latency-bound upstream), so the ratios mean
something on any machine. Run `python -m bench --help` for the options.
"""
