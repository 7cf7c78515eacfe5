"""An example capbench plugin: a metric, a benchmark and an engine, declared as entry points."""
