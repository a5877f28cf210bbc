"""The evaluation wing: zero-shot ranking (ITC top-k + ITM rerank), multilingual tables
and the task metrics."""
