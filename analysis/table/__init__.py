"""The paper's Table 3 on the machine at hand: distribution quality over steps T x cache interval N.

`experiment.py` generates each cell's samples as resumable shards (`analysis/samples.py`) and times the cells;
`metrics.py` scores them (FD, precision, recall, score, accuracy) against the reference set; `report.py` writes the
table and its HTML report and reads them back for the app; `__main__.py` is the command line
(`python -m analysis.table`, or under `torchrun` for several processes).
"""
