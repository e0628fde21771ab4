"""The largest numbers layerlake stores or accepts, shared by the config schemas and the warehouse's
content rules (one value each, so a config is refused exactly where a stored row would be).

>>> MAX_STEP * 2_097_152 <= MAX_TOKENS  # Pythia's tokens per step, at the largest step
True
"""

from __future__ import annotations

MAX_STEP = 10**12  # more than any training run takes; a larger step is a corrupt or lying row
MAX_TOKENS = 1 << 62  # tokens_seen (step x tokens per step): stored as int64, with room to add to it
MAX_THREADS = 1024  # torch threads per process: more than any machine's cores; 10^6 killed the process
