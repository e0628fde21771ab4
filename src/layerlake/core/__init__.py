"""The ground floor: parts every other floor shares, importing nothing else of layerlake.

- ``errors``: the one exception hierarchy (message + ``fix``);
- ``choices``: every closed set of values (executor kinds, dtypes, estimators, sites ...), one Enum each;
- ``paths``: where data lives by default, and the rule that keeps a path inside its root;
- ``limits``: the largest step, tokens seen and torch thread count accepted (the config and the warehouse);
- ``hashing``: content hashes (sha256 of files and bytes, the canonical-JSON hash of plain values);
- ``duck``: DuckDB connection settings and the read-only statement check;
- ``params``: typed SQL parameters (declared in SQL headers, validated, then bound);
- ``sqlfile``: the one header grammar of every ``.sql`` file, and the catalog that loads a folder of them;
- ``render``: tables for people (rich) and for files (CSV, JSON, Parquet), and how errors are printed.
"""
