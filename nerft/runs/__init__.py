"""Training runs on disk: `RunDir`, the only reader and writer of a run's files, and the listing
that `nerft runs` prints."""
