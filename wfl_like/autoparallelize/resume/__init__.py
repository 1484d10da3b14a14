"""What makes a rerun cheap and never wrong: the journal, the fingerprints, the cache.

- :mod:`.journal` is the SQLite file beside an output that records every finished item.
- :mod:`.fingerprint` and :mod:`.code_identity` say what an item's result depends on (the
  operation's code, its arguments, the item, its random stream) as a cache key.
- :mod:`.cache` is a run's use of its journal: what is reused, what is computed, and why.
- :mod:`.codec` is the journal's data-only format for outputs (never code).
"""
