"""Names for code written against the system the seed API comes from.

Only what a port needs, kept here so the rest of the library has one name per
thing:

```python
from durable_agent.compat import SqliteDatabase  # same as SqliteBackend
```

``SqliteDatabase(db_file=..., session_id=..., user_id=...)`` takes the same
arguments as `durable_agent.backends.sqlite.SqliteBackend`, because it is that
class. ``agent._agent_run_output`` (the seed's name for `Agent.last_run`) is
kept on `Agent` itself.
"""

from __future__ import annotations

from durable_agent.backends.sqlite import SqliteBackend as SqliteDatabase

__all__ = ["SqliteDatabase"]
