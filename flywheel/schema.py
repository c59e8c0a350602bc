"""Column names shared between stages: the snapshot (observe/validate output) and the scored snapshot (judge output).

A snapshot is one Parquet file; the stages' records carry its URI, never its rows.

Snapshot columns (clean rows after validate; observe's raw snapshot has the same columns):
    request_id     str                unique id of the model call
    timestamp      timestamp[us, UTC] when the call happened
    dt             str                partition day YYYY-MM-DD
    task           str                use case / task name
    model_version  str                production model that answered
    messages       str                JSON list of OpenAI chat messages (the prompt side, tool calls included)
    completion     str                the logged answer
    thumbs         Int8 (nullable)    -1 / 0 / 1
    resolved       boolean (nullable)
    escalated      boolean (nullable)
    edited         boolean (nullable)
    comment        str (nullable)
    latency_ms     Int64 (nullable)
    metadata       str                JSON object
    source_object  str                object key / file the row came from
    source_line    int64              1-based line (row index for Parquet)

Scored snapshot = snapshot columns + ``reward_<component>`` (float, NaN = missing) + ``reward_total``.
"""

SNAPSHOT_COLUMNS = [
    "request_id", "timestamp", "dt", "task", "model_version", "messages", "completion",
    "thumbs", "resolved", "escalated", "edited", "comment", "latency_ms", "metadata",
    "source_object", "source_line",
]
FEEDBACK_FIELDS = ["thumbs", "resolved", "escalated", "edited", "comment"]
# Feedback flags meaning a human had to step in (the ticket went to an agent, someone rewrote or re-routed the answer):
# when one is true the logged answer did not work as given, whatever a thumbs up says.
STEPPED_IN_FIELDS = ["escalated", "edited"]
REWARD_PREFIX = "reward_"
REWARD_TOTAL = "reward_total"
