"""Model weights: where a base model comes from (`base`), fetching the pinned demo model (`fetch`)
and the one loader of a run's or export's model for every verb (`loader`)."""
