"""capbench-rl: train captioners with TRL's GRPOTrainer, rewarded by capbench's own metrics.

capbench never imports this package; it uses capbench's public API only.
"""
