"""capbench: measure image captions, and train captioners with the same measurements as rewards."""

__version__ = "0.1.0"
