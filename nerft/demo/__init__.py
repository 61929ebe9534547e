"""The offline end-to-end demo: its pinned data slice (`data`) and the run itself (`run`)."""
