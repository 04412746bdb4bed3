"""travis-worker: a build worker on a Resque-compatible Redis queue that never loses a job."""

__version__ = "0.1.0"
